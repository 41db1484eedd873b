#!/usr/bin/env python3
"""Generate the golden reference files under tests/golden/.

What it makes (all numbers from Hugging Face transformers' GPT2LMHeadModel,
eager attention, eval mode, float64):

  tests/golden/<case>/config.json        as GPT2Config/save_pretrained writes it
  tests/golden/<case>/model.safetensors  the weights (see CASES for the format)
  tests/golden/<case>/reference.npz      input_ids, labels, logits, loss, grad/<name>
  tests/golden/optim/batches.npz         8 batches (input_ids_<k>, labels_<k>)
  tests/golden/optim/<optimizer>.npz     step<k>/<name> parameters, loss per step
  tests/golden/optim/clip.npz            grad-norm clipping of the first batch

Cases: tiny, odd, relu, hubstyle, sinusoidal (see CASES below and README.md).

The loss is computed here in float64 with HF's causal-LM semantics (labels are
shifted inside: logits[:, :-1] against labels[:, 1:], -100 ignored, mean over
the rest). HF's own `model(..., labels=...)` path calls `logits.float()`, which
casts float64 logits down to float32, so its loss and gradients are only
float32-accurate; the script checks that its float64 loss agrees with HF's to
float32 precision and uses its own.

Weights are random, larger than HF's default init so that the tests
discriminate: every matrix (wte, wpe, Conv1D weights) ~ N(0, 0.2^2), every
bias ~ N(0, 0.1^2), LayerNorm weights ~ 1 + N(0, 0.1^2). Dropout probabilities
are set to 0 in the configs (except hubstyle, which keeps HF's 0.1 like the
real hub config); every forward runs in eval mode anyway.

Rerun (needs torch + transformers; the test suite does not):

    python3 -m venv /tmp/venv-torch
    /tmp/venv-torch/bin/pip install torch transformers safetensors numpy
    HF_HUB_OFFLINE=1 /tmp/venv-torch/bin/python tests/golden/make_golden.py

The output is deterministic (fixed numpy seeds, one CPU thread); nothing is
downloaded: models are built from GPT2Config with our own random init.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

GOLDEN = Path(__file__).resolve().parent
IGNORE = -100

# Dropout off in the config so that the files describe what was computed.
NO_DROPOUT = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)

CASES = [
    dict(
        name="tiny",
        config=dict(
            n_layer=2,
            n_embd=12,
            n_head=3,
            vocab_size=37,
            n_positions=16,
            activation_function="gelu_new",
            layer_norm_epsilon=1e-5,
            **NO_DROPOUT,
        ),
        B=2,
        T=7,
        seed=101,
        labels="same",
        doc="2 layers, n_embd 12, 3 heads, V 37, gelu_new; labels = input_ids",
    ),
    dict(
        name="odd",
        config=dict(
            n_layer=3,
            n_embd=20,
            n_head=4,
            n_inner=36,
            vocab_size=53,
            n_positions=11,
            activation_function="gelu",
            layer_norm_epsilon=1e-6,
            **NO_DROPOUT,
        ),
        B=3,
        T=11,
        seed=202,
        labels="same",
        ignore=[(0, 3), (1, 10), (2, 1), (2, 2), (2, 7)],
        doc="3 layers, n_embd 20, 4 heads, n_inner 36, V 53, exact gelu, eps 1e-6, "
        "T = n_positions; labels = input_ids with five -100",
    ),
    dict(
        name="relu",
        config=dict(
            n_layer=1,
            n_embd=8,
            n_head=2,
            vocab_size=29,
            n_positions=9,
            activation_function="relu",
            **NO_DROPOUT,
        ),
        B=1,
        T=5,
        seed=303,
        labels="random",
        ignore=[(0, 2)],
        doc="1 layer, n_embd 8, 2 heads, V 29, relu; labels independent of input_ids, one -100",
    ),
    dict(
        name="hubstyle",
        config=dict(
            n_layer=2,
            n_embd=16,
            n_head=2,
            vocab_size=41,
            n_positions=12,
            activation_function="gelu_new",
        ),
        B=2,
        T=6,
        seed=404,
        labels="same",
        hubstyle=True,
        ignore=[(1, 5)],
        doc="2 layers, n_embd 16, 2 heads, V 41, gelu_new; weight file laid out "
        "like openai-community/gpt2 (no `transformer.` prefix, h.N.attn.bias "
        "buffers, float32); references in float64 from the float32 weights",
    ),
    dict(
        name="sinusoidal",
        config=dict(
            n_layer=2,
            n_embd=12,
            n_head=3,
            vocab_size=37,
            n_positions=16,
            activation_function="gelu_new",
            layer_norm_epsilon=1e-5,
            **NO_DROPOUT,
        ),
        B=2,
        T=7,
        seed=505,
        labels="same",
        sinusoidal=True,
        doc="as tiny, but wpe is the fixed sinusoidal table (not a parameter, "
        "not in the file, no gradient); config has position_embedding_type",
    ),
]


# --------------------------------------------------------------------------
# helpers


def make_config(cfg: dict) -> GPT2Config:
    v = cfg["vocab_size"]
    # bos/eos default to 50256, outside a tiny vocabulary; the real gpt2 uses
    # vocab_size - 1, so do the same.
    return GPT2Config(bos_token_id=v - 1, eos_token_id=v - 1, attn_implementation="eager", **cfg)


def build_model(config: GPT2Config) -> GPT2LMHeadModel:
    torch.manual_seed(0)  # the constructor's own init is overwritten below
    model = GPT2LMHeadModel(config)
    assert model.config._attn_implementation == "eager", model.config._attn_implementation
    return model.double().eval()


def is_ln_weight(name: str) -> bool:
    return name.endswith((".ln_1.weight", ".ln_2.weight", "ln_f.weight"))


def init_params(model: GPT2LMHeadModel, rng: np.random.Generator) -> None:
    """Larger-than-default random init (see the module docstring)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            z = rng.standard_normal(tuple(p.shape))
            if is_ln_weight(name):
                v = 1.0 + 0.1 * z
            elif name.endswith(".bias"):
                v = 0.1 * z
            else:
                v = 0.2 * z
            p.copy_(torch.from_numpy(v))


def sinusoidal_table(n_positions: int, d: int) -> np.ndarray:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(same)."""
    pos = np.arange(n_positions, dtype=np.float64)[:, None]
    two_i = np.arange(0, d, 2, dtype=np.float64)[None, :]
    angle = pos / np.power(10000.0, two_i / d)
    pe = np.zeros((n_positions, d), dtype=np.float64)
    pe[:, 0::2] = np.sin(angle)
    pe[:, 1::2] = np.cos(angle[:, : d // 2])
    return pe


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """HF ForCausalLMLoss semantics without its `logits.float()` downcast."""
    v = logits.shape[-1]
    return F.cross_entropy(
        logits[:, :-1, :].reshape(-1, v),
        labels[:, 1:].reshape(-1),
        ignore_index=IGNORE,
        reduction="mean",
    )


def hf_builtin_loss(model, input_ids, labels) -> float:
    with torch.no_grad():
        return float(model(input_ids=input_ids, labels=labels).loss)


def make_batch(rng, B, T, V, labels_mode, ignore=()):
    ids = rng.integers(0, V, size=(B, T), dtype=np.int64)
    if labels_mode == "same":
        labels = ids.copy()
    elif labels_mode == "random":
        labels = rng.integers(0, V, size=(B, T), dtype=np.int64)
    else:
        raise ValueError(labels_mode)
    for b, t in ignore:
        labels[b, t] = IGNORE
    return ids, labels


def forward_backward(model, ids: np.ndarray, labels: np.ndarray):
    model.zero_grad(set_to_none=True)
    ti = torch.from_numpy(ids)
    tl = torch.from_numpy(labels)
    logits = model(input_ids=ti).logits
    loss = causal_lm_loss(logits, tl)
    loss.backward()
    return logits, loss


def savez(path: Path, arrays: dict) -> None:
    """Uncompressed .npz, no pickles; keys may contain '/'."""
    for k, v in arrays.items():
        assert isinstance(v, np.ndarray) and v.dtype != object, k
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def save_hf(model, config_extra: dict | None, drop: tuple[str, ...], out: Path) -> None:
    """save_pretrained into a temp dir, keep config.json and model.safetensors."""
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        files = sorted(os.listdir(tmp))
        assert "model.safetensors" in files and "config.json" in files, files
        cfg_text = Path(tmp, "config.json").read_text()
        if config_extra:
            d = json.loads(cfg_text)
            d.update(config_extra)
            cfg_text = json.dumps(d, indent=2, sort_keys=True) + "\n"  # HF's own format
        (out / "config.json").write_text(cfg_text)
        src = Path(tmp, "model.safetensors")
        if not drop:
            shutil.copyfile(src, out / "model.safetensors")
        else:
            with safe_open(str(src), framework="pt") as f:
                meta = f.metadata()
                tensors = {k: f.get_tensor(k) for k in f if k not in drop}
            save_file(tensors, str(out / "model.safetensors"), metadata=meta)


def save_hubstyle(model, config: GPT2Config, out: Path) -> None:
    """Mimic openai-community/gpt2's model.safetensors: bare names, attn.bias, F32."""
    with tempfile.TemporaryDirectory() as tmp:
        m32 = copy.deepcopy(model).float()
        m32.save_pretrained(tmp, safe_serialization=True)  # only for config.json
        shutil.copyfile(Path(tmp, "config.json"), out / "config.json")
    tensors = {}
    for name, p in model.named_parameters():
        assert name.startswith("transformer."), name
        tensors[name[len("transformer.") :]] = p.detach().float().contiguous()
    P = config.n_positions
    mask = torch.tril(torch.ones(P, P, dtype=torch.float32)).view(1, 1, P, P)
    for i in range(config.n_layer):
        tensors[f"h.{i}.attn.bias"] = mask.clone()
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})


# --------------------------------------------------------------------------
# cases


def make_case(case: dict) -> dict:
    out = GOLDEN / case["name"]
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(case["seed"])
    config = make_config(case["config"])
    model = build_model(config)
    init_params(model, rng)

    drop: tuple[str, ...] = ()
    extra = None
    if case.get("sinusoidal"):
        with torch.no_grad():
            model.transformer.wpe.weight.copy_(
                torch.from_numpy(sinusoidal_table(config.n_positions, config.n_embd))
            )
        model.transformer.wpe.weight.requires_grad_(False)
        drop = ("transformer.wpe.weight",)
        extra = {"position_embedding_type": "sinusoidal"}
    if case.get("hubstyle"):
        # The file holds float32; the references use those values upcast.
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.float().double())

    ids, labels = make_batch(
        rng, case["B"], case["T"], config.vocab_size, case["labels"], case.get("ignore", ())
    )
    logits, loss = forward_backward(model, ids, labels)

    arrays = {
        "input_ids": ids,
        "labels": labels,
        "logits": logits.detach().numpy().astype(np.float64),
        "loss": np.array(loss.item(), dtype=np.float64),
    }
    grad_names = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        assert p.grad is not None and p.grad.dtype == torch.float64, name
        arrays[f"grad/{name}"] = p.grad.detach().numpy().copy()
        grad_names.append(name)

    # Cross-checks: HF's own loss (float32 cross-entropy) agrees to f32 precision.
    hf_loss = hf_builtin_loss(model, torch.from_numpy(ids), torch.from_numpy(labels))
    rel = abs(hf_loss - loss.item()) / abs(loss.item())
    assert rel < 1e-6, (case["name"], hf_loss, loss.item())

    if case.get("hubstyle"):
        save_hubstyle(model, config, out)
    else:
        save_hf(model, extra, drop, out)
    savez(out / "reference.npz", arrays)

    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return dict(
        case=case["name"],
        params=n_params,
        loss=loss.item(),
        hf_loss_rel=rel,
        model=model,
        ids=ids,
        labels=labels,
        logits=arrays["logits"],
        grad_names=grad_names,
    )


# --------------------------------------------------------------------------
# optimizer trajectories


N_BATCHES = 8


def make_optim_batches(config: GPT2Config) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(909)
    batches = []
    for k in range(N_BATCHES):
        ignore = [(k % 2, 1 + k % 6)] if k % 3 == 2 else []  # a few -100s
        batches.append(make_batch(rng, 2, 7, config.vocab_size, "same", ignore))
    return batches


def params_f64(model) -> dict[str, np.ndarray]:
    return {n: p.detach().double().numpy().copy() for n, p in model.named_parameters()}


def run_optimizer(base_model, dtype, make_opt, batches, steps):
    model = copy.deepcopy(base_model).to(dtype).eval()
    opt = make_opt(model.parameters())
    losses, traj = [], []
    for k in range(steps):
        ids, labels = batches[k]
        opt.zero_grad(set_to_none=True)
        logits = model(input_ids=torch.from_numpy(ids)).logits
        loss = causal_lm_loss(logits, torch.from_numpy(labels))
        loss.backward()
        opt.step()
        losses.append(loss.item())
        traj.append(params_f64(model))
    return losses, traj


def rel_frob(a: dict, ref: dict) -> float:
    num = sum(float(np.sum((a[n] - ref[n]) ** 2)) for n in ref)
    den = sum(float(np.sum(ref[n] ** 2)) for n in ref)
    return (num / den) ** 0.5


OPTIMIZERS = [
    (
        "adamw_fp64",
        torch.float64,
        8,
        lambda ps: torch.optim.AdamW(ps, lr=3e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01),
        "AdamW lr 3e-3 betas (0.9, 0.999) eps 1e-8 weight_decay 0.01",
    ),
    (
        "adamw_fp32",
        torch.float32,
        8,
        lambda ps: torch.optim.AdamW(ps, lr=3e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01),
        "same as adamw_fp64, model and optimizer in float32",
    ),
    (
        "adam_fp64",
        torch.float64,
        4,
        lambda ps: torch.optim.Adam(ps, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1),
        "Adam lr 1e-3 betas (0.9, 0.999) eps 1e-8 weight_decay 0.1 (L2, added to the gradient)",
    ),
    (
        "sgd_fp64",
        torch.float64,
        4,
        lambda ps: torch.optim.SGD(
            ps, lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01, nesterov=False
        ),
        "SGD lr 0.05 momentum 0.9 dampening 0.1 weight_decay 0.01",
    ),
    (
        "sgd_nesterov_fp64",
        torch.float64,
        4,
        lambda ps: torch.optim.SGD(
            ps, lr=0.05, momentum=0.9, dampening=0.0, weight_decay=0.01, nesterov=True
        ),
        "SGD lr 0.05 momentum 0.9 nesterov weight_decay 0.01",
    ),
]


def make_optim(tiny_model) -> list[dict]:
    out = GOLDEN / "optim"
    out.mkdir(parents=True, exist_ok=True)
    batches = make_optim_batches(tiny_model.config)
    b = {}
    for k, (ids, labels) in enumerate(batches):
        b[f"input_ids_{k}"] = ids
        b[f"labels_{k}"] = labels
    savez(out / "batches.npz", b)

    results = {}
    for name, dtype, steps, make_opt, _doc in OPTIMIZERS:
        losses, traj = run_optimizer(tiny_model, dtype, make_opt, batches, steps)
        arrays = {"loss": np.array(losses, dtype=np.float64)}
        for k, params in enumerate(traj, start=1):
            for n, v in params.items():
                arrays[f"step{k}/{n}"] = v
        results[name] = (losses, traj, arrays)

    # float32 vs float64 AdamW: PyTorch's own error, per step and after the last.
    _, traj32, arr32 = results["adamw_fp32"]
    _, traj64, _ = results["adamw_fp64"]
    per_step = [rel_frob(a, r) for a, r in zip(traj32, traj64)]
    arr32["rel_err_vs_fp64_per_step"] = np.array(per_step, dtype=np.float64)
    arr32["rel_err_vs_fp64"] = np.array(per_step[-1], dtype=np.float64)
    for name, (_, _, arrays) in results.items():
        savez(out / f"{name}.npz", arrays)

    # Gradient clipping on the first batch.
    model = copy.deepcopy(tiny_model).eval()
    ids, labels = batches[0]
    _, loss = forward_backward(model, ids, labels)
    max_norm = 0.5
    grads = {n: p.grad.detach().numpy().copy() for n, p in model.named_parameters()}
    total = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=max_norm)
    clipped = {n: p.grad.detach().numpy().copy() for n, p in model.named_parameters()}
    clip = {
        "input_ids": ids,
        "labels": labels,
        "loss": np.array(loss.item(), dtype=np.float64),
        "max_norm": np.array(max_norm, dtype=np.float64),
        "total_norm": np.array(float(total), dtype=np.float64),
        # torch: coef = max_norm / (total_norm + 1e-6), clamped to at most 1.
        "clip_coef": np.array(min(1.0, max_norm / (float(total) + 1e-6)), dtype=np.float64),
    }
    for n in grads:
        clip[f"grad/{n}"] = grads[n]
        clip[f"clipped_grad/{n}"] = clipped[n]
    savez(out / "clip.npz", clip)

    summary = []
    for name, _dtype, steps, _m, _doc in OPTIMIZERS:
        losses = results[name][0]
        summary.append(dict(name=name, steps=steps, first=losses[0], last=losses[-1]))
    return summary, per_step[-1], float(total)


# --------------------------------------------------------------------------
# verification


def verify_hubstyle(case_dir: Path, ref_logits: np.ndarray, ids: np.ndarray) -> tuple[float, float]:
    """from_pretrained must load the hub-style file and reproduce the logits."""
    m = GPT2LMHeadModel.from_pretrained(str(case_dir), attn_implementation="eager").eval()
    assert m.config._attn_implementation == "eager"
    with torch.no_grad():
        l32 = m(input_ids=torch.from_numpy(ids)).logits.double().numpy()
        l64 = m.double()(input_ids=torch.from_numpy(ids)).logits.numpy()
    e32 = np.linalg.norm(l32 - ref_logits) / np.linalg.norm(ref_logits)
    e64 = np.linalg.norm(l64 - ref_logits) / np.linalg.norm(ref_logits)
    assert e64 < 1e-13, e64
    assert e32 < 1e-5, e32
    return float(e32), float(e64)


def verify_roundtrip(case_dir: Path, model, ids, ref_logits) -> float:
    """Load our safetensors back into a fresh model (HF names) and recompute."""
    m = GPT2LMHeadModel.from_pretrained(
        str(case_dir), attn_implementation="eager", dtype=torch.float64
    ).eval()
    if "sinusoidal" in case_dir.name:
        with torch.no_grad():
            m.transformer.wpe.weight.copy_(model.transformer.wpe.weight)
    with torch.no_grad():
        logits = m(input_ids=torch.from_numpy(ids)).logits.numpy()
    return float(np.linalg.norm(logits - ref_logits) / np.linalg.norm(ref_logits))


def gradcheck_one(model, ids, labels) -> None:
    """Finite differences on ln_f.bias: confirms the float64 path end to end."""
    p = model.transformer.ln_f.bias
    ti, tl = torch.from_numpy(ids), torch.from_numpy(labels)

    def f(bias):
        saved = p.data.clone()
        p.data.copy_(bias)
        try:
            return causal_lm_loss(model(input_ids=ti).logits, tl)
        finally:
            p.data.copy_(saved)

    _, _loss = forward_backward(model, ids, labels)
    g = p.grad.detach().clone()
    h = 1e-6
    for j in range(min(3, p.numel())):
        e = torch.zeros_like(p)
        e[j] = h
        with torch.no_grad():
            fd = (f(p.detach() + e) - f(p.detach() - e)) / (2 * h)
        assert abs(fd.item() - g[j].item()) < 1e-8 * max(1.0, abs(g[j].item())), (j, fd, g[j])


def human(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.2f} MiB"


def main() -> int:
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"numpy {np.__version__}"
    )
    rows = []
    tiny_model = None
    for case in CASES:
        r = make_case(case)
        d = GOLDEN / case["name"]
        gradcheck_one(r["model"], r["ids"], r["labels"])
        if case.get("hubstyle"):
            e32, e64 = verify_hubstyle(d, r["logits"], r["ids"])
            note = f"from_pretrained rel err f32 {e32:.1e} f64 {e64:.1e}"
        else:
            e = verify_roundtrip(d, r["model"], r["ids"], r["logits"])
            assert e < 1e-14, (case["name"], e)
            note = f"reload rel err {e:.1e}"
        note += f"; HF f32 loss rel diff {r['hf_loss_rel']:.1e}"
        rows.append((case["name"], r["params"], r["loss"], d, note))
        if case["name"] == "tiny":
            tiny_model = r["model"]

    opt_summary, rel32, total_norm = make_optim(tiny_model)

    print()
    print(f"{'case':<12} {'params':>7} {'loss':>10}  {'files':<60} notes")
    for name, n, loss, d, note in rows:
        files = ", ".join(f"{f.name} {human(f.stat().st_size)}" for f in sorted(d.iterdir()))
        print(f"{name:<12} {n:>7} {loss:>10.6f}  {files:<60} {note}")
    print()
    print(f"{'optimizer':<18} {'steps':>5} {'loss[0]':>10} {'loss[-1]':>10}")
    for s in opt_summary:
        print(f"{s['name']:<18} {s['steps']:>5} {s['first']:>10.6f} {s['last']:>10.6f}")
    print(f"adamw fp32 vs fp64 rel Frobenius error after 8 steps: {rel32:.3e}")
    print(f"clip: total grad norm of batch 0 = {total_norm:.6f} (max_norm 0.5)")
    print()
    total = 0
    for f in sorted(GOLDEN.rglob("*")):
        if f.is_file() and f.suffix in (".npz", ".safetensors", ".json"):
            total += f.stat().st_size
            print(f"  {f.relative_to(GOLDEN)}  {human(f.stat().st_size)}")
    print(f"total generated: {human(total)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
