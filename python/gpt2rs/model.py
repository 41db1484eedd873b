"""GPT2LMHead: HF's GPT2LMHeadModel on the tiled runtime.

The compiled core (`_gpt2rs.Gpt2Core`) owns every tensor; this class checks
inputs, maps HF names and shapes, and moves numpy arrays in and out.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import numpy as np

from . import checkpoint as ckpt_io
from . import dist, hub, mpi
from ._gpt2rs import (
    DataParallelCore,
    Gpt2Core,
    KvCache,
    Runtime,
    cpu_bf16_gemm,
    default_runtime,
)
from .config import GPT2Config
from .generate import generate as _generate
from .options import ModelOptions

IGNORE_INDEX = -100


def _ids(name: str, a: Any) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D array [batch, seq_len] of token ids, got shape {arr.shape}"
        )
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must hold integers, got dtype {arr.dtype}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    return np.ascontiguousarray(arr, dtype=np.int64)


class GPT2LMHead:
    """GPT-2 with its LM head tied to the token embedding, as HF's GPT2LMHeadModel.

    Args:
        config: a GPT2Config, a dict of HF config fields, or a config.json path.
        options: how it computes (precision, tiling, recompute, determinism,
            dropout): a gpt2rs.ModelOptions; None: the defaults.
        runtime: the gpt2rs.Runtime to run on; None uses the default one.
        **overrides: ModelOptions fields (``dtype="bf16"``, ``vocab_tile=1024``,
            ...) that replace those of `options`.

    The parameters start at zero; use `from_pretrained`, `from_config` or
    `load_state_dict`.

    In a world of several ranks (`gpt2rs.dist.init`), the model trains
    data-parallel: `forward_backward` scales its gradients by 1 / world size,
    `clip_grad_norm` and the optimizer's `step` sum them over the ranks
    first, and `state_dict` returns the whole model (under ZeRO-1 its first
    call after a step is collective: every rank makes it).
    """

    def __init__(
        self,
        config: GPT2Config | dict[str, Any] | str | os.PathLike[str],
        options: ModelOptions | None = None,
        *,
        runtime: Runtime | None = None,
        **overrides: Any,
    ) -> None:
        self.options = ModelOptions.of(options, **overrides)
        config = GPT2Config.coerce(config)
        d = self.options.dropout
        if d is not None:
            config = replace(config, resid_pdrop=d, embd_pdrop=d, attn_pdrop=d)
        self._config = config
        if "bf16" in self.options.dtype:
            cpu_bf16_gemm()  # a bad GPT2RS_BF16_GEMM is one ValueError here, not at the first GEMM
        self._runtime = runtime if runtime is not None else default_runtime()
        self._core = Gpt2Core(self._config, self.options, self._runtime)
        self._names = list(self._core.param_names())
        self._shapes = {n: tuple(self._core.param_shape(n)) for n in self._names}
        self._np_dtype = np.dtype(self._core.export_dtype)
        self._dp: DataParallelCore | None = None
        self._world = dist.World()
        self._unreduced = False
        # ZeRO-1: whether every rank's master copies are current (gathered
        # since the last optimizer step), so state_dict need not gather again.
        self.masters_current = True
        if dist.world().size > 1:
            self.data_parallel(dist.world())

    # -- construction -------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str],
        options: ModelOptions | None = None,
        *,
        runtime: Runtime | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        **overrides: Any,
    ) -> GPT2LMHead:
        """A model from an HF repo id (downloaded with huggingface_hub), a
        local HF-format directory (config.json + model.safetensors, or shards
        with an index), or a gpt2rs-train checkpoint or checkpoint root (its
        files checked against their recorded SHA-256, as a resume does).
        options, runtime and overrides as for the constructor."""
        options = ModelOptions.of(options, **overrides)
        directory = hub.resolve(name_or_path, cache_dir)
        if ckpt_io.is_checkpoint(directory):
            directory = ckpt_io.verified(directory)
        config = GPT2Config.from_json_file(directory / "config.json")
        state = hub.read_state(directory)
        model = cls(config, options, runtime=runtime)
        model._load(state, source=str(directory))
        return model

    @classmethod
    def from_config(
        cls,
        config: GPT2Config | dict[str, Any] | str | os.PathLike[str],
        options: ModelOptions | None = None,
        *,
        seed: int = 0,
        runtime: Runtime | None = None,
        **overrides: Any,
    ) -> GPT2LMHead:
        """A randomly initialised model, as HF initialises GPT-2: weights
        ~ N(0, initializer_range), the residual projections scaled by
        1/sqrt(2 n_layer), biases 0, LayerNorm weights 1, drawn from
        numpy's default_rng(seed). options, runtime and overrides as for
        the constructor."""
        model = cls(config, options, runtime=runtime, **overrides)
        cfg = model.config
        rng = np.random.default_rng(seed)
        std = cfg.initializer_range
        state = {}
        for name in model._names:
            shape = model._shapes[name]
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                v = np.ones(shape)
            elif name.endswith(".bias"):
                v = np.zeros(shape)
            elif name.endswith("c_proj.weight"):
                v = rng.normal(0.0, std / np.sqrt(2 * cfg.n_layer), shape)
            else:
                v = rng.normal(0.0, std, shape)
            state[name] = v
        model._load(state, source="random init")
        return model

    @property
    def config(self) -> GPT2Config:
        return self._config

    @property
    def dtype(self) -> str:
        """The precision mode (``options.dtype``)."""
        return self.options.dtype

    @property
    def runtime(self) -> Runtime:
        return self._runtime

    @property
    def core(self) -> Gpt2Core:
        """The compiled model, which gpt2rs's optimizers bind to."""
        return self._core

    @property
    def numpy_dtype(self) -> np.dtype[Any]:
        """The dtype arrays cross in: float64 for fp64 models, else float32."""
        return self._np_dtype

    def param_shape(self, name: str) -> tuple[int, ...]:
        """HF shape of parameter `name` (HF's name, with or without `transformer.`)."""
        key = name[len(hub.PREFIX) :] if name.startswith(hub.PREFIX) else name
        if key not in self._shapes:
            raise KeyError(f"no parameter named {name!r}")
        return self._shapes[key]

    def num_parameters(self) -> int:
        return int(sum(np.prod(s) for s in self._shapes.values()))

    # -- compute ------------------------------------------------------------

    def forward(self, input_ids: Any) -> np.ndarray:
        """Logits [B, T, vocab_size] (float64 for fp64, else float32), dropout off."""
        ids = self._check_ids(_ids("input_ids", input_ids))
        flat = self._core.forward(ids)
        return flat.reshape(ids.shape[0], ids.shape[1], self._config.vocab_size)

    __call__ = forward

    def forward_backward(
        self,
        input_ids: Any,
        targets: Any = None,
        labels: Any = None,
        grad_scale: float = 1.0,
        dropout_seed: int | None = None,
    ) -> float:
        """Mean cross-entropy of one minibatch; adds grad_scale * d(loss)/d(param)
        into the gradients.

        targets: next-token ids aligned with input_ids (position t predicts
        targets[t]); labels: HF semantics (shifted inside); neither: labels =
        input_ids. -100 is ignored. dropout_seed: apply the config's dropout
        with masks drawn from this seed (None: dropout off)."""
        ids, tg = self._targets(input_ids, targets, labels)
        if dropout_seed is not None and (
            not isinstance(dropout_seed, (int, np.integer)) or dropout_seed < 0
        ):
            raise ValueError(f"dropout_seed must be an int >= 0 or None, got {dropout_seed!r}")
        scale = float(grad_scale) / self._world.size
        self._unreduced = self._dp is not None
        return float(self._core.forward_backward(ids, tg, scale, dropout_seed))

    def loss(self, input_ids: Any, targets: Any = None, labels: Any = None) -> float:
        """Mean cross-entropy of one minibatch without backward (evaluation);
        targets and labels as in forward_backward."""
        ids, tg = self._targets(input_ids, targets, labels)
        return float(self._core.loss(ids, tg))

    def _targets(self, input_ids: Any, targets: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
        ids = self._check_ids(_ids("input_ids", input_ids))
        if targets is not None and labels is not None:
            raise ValueError("give targets or labels, not both")
        if targets is not None:
            tg = _ids("targets", targets)
        else:
            lab = ids if labels is None else _ids("labels", labels)
            if lab.shape != ids.shape:
                raise ValueError(
                    f"labels shape {lab.shape} differs from input_ids shape {ids.shape}"
                )
            tg = np.full_like(lab, IGNORE_INDEX)
            tg[:, :-1] = lab[:, 1:]
        if tg.shape != ids.shape:
            raise ValueError(f"targets shape {tg.shape} differs from input_ids shape {ids.shape}")
        bad = (tg != IGNORE_INDEX) & ((tg < 0) | (tg >= self._config.vocab_size))
        if bad.any():
            raise ValueError(
                f"target id {int(tg[bad][0])} is outside the vocabulary [0, {self._config.vocab_size}) (and not -100)"
            )
        return ids, tg

    def check_ids(self, input_ids: Any) -> np.ndarray:
        """input_ids as a C-contiguous int64 [batch, seq_len] array, or one
        ValueError/TypeError saying what is wrong with them (shape, dtype,
        an id outside the vocabulary, longer than n_positions)."""
        return self._check_ids(_ids("input_ids", input_ids))

    def new_cache(self, batch: int) -> KvCache:
        """An empty KV cache for `batch` rows, for `forward_cached`."""
        return self._core.new_cache(batch)

    def forward_cached(self, cache: KvCache, input_ids: Any, last_only: bool = False) -> np.ndarray:
        """Logits of input_ids [B, n] continuing what `cache` holds, which
        then holds them too: [B, n, vocab_size], or [B, vocab_size] of the
        last position with last_only."""
        ids = self.check_ids(input_ids)
        flat = self._core.forward_cached(cache, ids, last_only=last_only)
        b, v = ids.shape[0], self._config.vocab_size
        return flat.reshape(b, v) if last_only else flat.reshape(b, ids.shape[1], v)

    def _check_ids(self, ids: np.ndarray) -> np.ndarray:
        v = self._config.vocab_size
        if ids.min() < 0 or ids.max() >= v:
            bad = ids[(ids < 0) | (ids >= v)][0]
            raise ValueError(f"token id {int(bad)} is outside the vocabulary [0, {v})")
        if ids.shape[1] > self._config.n_positions:
            raise ValueError(
                f"sequence length {ids.shape[1]} exceeds n_positions = {self._config.n_positions}"
            )
        return ids

    def zero_grad(self) -> None:
        self._core.zero_grad()

    # -- data parallelism ------------------------------------------------------

    def data_parallel(self, world: dist.World) -> None:
        """Trains this model data-parallel in `world` (done by the constructor
        for `gpt2rs.dist.world()`); before any optimizer is made for it."""
        if world.comm is None:
            self._dp, self._world = None, world
            return
        # On a GPU the collectives go through NCCL (found here: a missing
        # wheel is one DistError line).
        nccl = mpi.nccl_library_path() if self._runtime.comm_on_gpu else None
        self._dp = DataParallelCore(
            self._core, world.comm, world.zero_stage, world.bucket_bytes, nccl
        )
        self._world = world
        self._release_masters()

    def _release_masters(self) -> None:
        """ZeRO-1: only a tile's owner keeps (and steps) its master weights."""
        if self._dp is not None and self._dp.zero_stage == 1:
            self._dp.release_masters()
            self.masters_current = False

    @property
    def world(self) -> dist.World:
        return self._world

    @property
    def dp(self) -> DataParallelCore | None:
        """The data-parallel core (None in a world of one)."""
        return self._dp

    def reduce_grads(self) -> None:
        """Submits the sum of the gradients over the ranks, once per step
        (after the step's last `forward_backward`); clipping and the
        optimizer's step call it."""
        if self._dp is not None and self._unreduced:
            self._dp.reduce_grads()
            self._unreduced = False

    # -- parameters ---------------------------------------------------------

    def _get(self, fn: Any, name: str) -> np.ndarray:
        return np.asarray(fn(name)).reshape(self._shapes[name])

    def gradients(self) -> dict[str, np.ndarray]:
        """HF parameter name -> gradient (HF shape; float64 for fp64, else float32)."""
        return {hub.PREFIX + n: self._get(self._core.get_grad, n) for n in self._names}

    def state_dict(self) -> dict[str, np.ndarray]:
        """HF parameter name -> weights (the fp32 master copy for bf16)."""
        if self._dp is not None and not self.masters_current:
            self._dp.gather_masters()
            self.masters_current = True
        state = {hub.PREFIX + n: self._get(self._core.get_param, n) for n in self._names}
        self._release_masters()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Loads weights named as HF names them (with or without `transformer.`)."""
        self._load({k: np.asarray(v) for k, v in state.items()}, source="state dict")

    def _load(self, state: dict[str, np.ndarray], source: str) -> None:
        st = hub.normalize(state)
        hub.check(st, self._shapes, source)
        for name in self._names:
            a = np.ascontiguousarray(st[name], dtype=self._np_dtype).reshape(-1)
            self._core.set_param(name, a.view(np.uint8))
        self._release_masters()

    def save_pretrained(self, directory: str | os.PathLike[str]) -> None:
        """Writes config.json and model.safetensors; transformers loads them."""
        state = {n: v for n, v in ((k[len(hub.PREFIX) :], v) for k, v in self.state_dict().items())}
        hub.write_pretrained(directory, self._config.to_dict(), state)

    def clip_grad_norm(self, max_norm: float) -> float:
        """The global 2-norm of the gradients; scales them down to `max_norm`
        when it is larger (torch.nn.utils.clip_grad_norm_)."""
        if self._dp is not None:
            self.reduce_grads()
            return float(self._dp.clip_grad_norm(float(max_norm)))
        return float(self._core.clip_grad_norm(float(max_norm)))

    #: See `gpt2rs.generate.generate` (the decoding loop, with its sampling).
    generate = _generate

    def __repr__(self) -> str:
        c = self._config
        return (
            f"GPT2LMHead(n_layer={c.n_layer}, n_embd={c.n_embd}, n_head={c.n_head}, "
            f"vocab_size={c.vocab_size}, dtype={self.dtype!r}, params={self.num_parameters():,})"
        )
