"""SGD, Adam and AdamW with torch.optim's semantics; the state lives in
tiles next to the parameters, in the compiled core."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from ._gpt2rs import OptimizerCore
from .hub import PREFIX
from .model import GPT2LMHead


class Optimizer:
    """Common part: step, lr, state_dict / load_state_dict."""

    def __init__(
        self,
        model: GPT2LMHead,
        kind: Literal["sgd", "adam", "adamw"],
        lr: float,
        weight_decay: float,
        **hyper: Any,
    ) -> None:
        if not isinstance(model, GPT2LMHead):
            raise TypeError(f"expected a gpt2rs.GPT2LMHead, got {type(model).__name__}")
        self.model = model
        self.kind = kind
        self.hyper = dict(hyper)
        self._core = OptimizerCore(model.core, kind, float(lr), float(weight_decay), **hyper)
        if model.dp is not None:
            model.dp.attach(self._core)

    @property
    def core(self) -> OptimizerCore:
        return self._core

    def step(self) -> None:
        """One update of every parameter from its gradient (summed over the
        ranks first in a data-parallel world)."""
        dp = self.model.dp
        self.model.reduce_grads()
        self._core.step()
        if dp is not None:
            dp.gather_params()
            self.model.masters_current = dp.zero_stage == 0

    @property
    def lr(self) -> float:
        return float(self._core.lr)

    @lr.setter
    def lr(self, value: float) -> None:
        self._core.lr = float(value)

    @property
    def weight_decay(self) -> float:
        return float(self._core.weight_decay)

    @property
    def step_count(self) -> int:
        return int(self._core.step_count)

    def state_dict(self) -> dict[str, Any]:
        """The whole state (collective under ZeRO-1: gathered from the owners,
        then released again)."""
        dp = self.model.dp
        if dp is not None:
            dp.gather_state(self._core)
        state: dict[str, dict[str, np.ndarray]] = {}
        for p, s in self._core.state_keys():
            shape = self.model.param_shape(p)
            state.setdefault(PREFIX + p, {})[s] = np.asarray(self._core.get_state(p, s)).reshape(
                shape
            )
        if dp is not None:
            dp.release_state(self._core)
        return {
            "kind": self.kind,
            "step": self.step_count,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "hyper": dict(self.hyper),
            "state": state,
        }

    def load_state_dict(self, d: dict[str, Any]) -> None:
        if d.get("kind") != self.kind:
            raise ValueError(
                f"optimizer state is for {d.get('kind')!r}, this optimizer is {self.kind!r}"
            )
        state = d.get("state", {})
        for p, s in self._core.state_keys():
            try:
                v = np.asarray(state[PREFIX + p][s])
            except KeyError:
                raise ValueError(f"optimizer state has no {s!r} for {PREFIX + p}") from None
            if v.shape != self.model.param_shape(p):
                raise ValueError(
                    f"optimizer state {s!r} of {PREFIX + p} has shape {v.shape}, expected {self.model.param_shape(p)}"
                )
            a = np.ascontiguousarray(v, dtype=self.model.numpy_dtype).reshape(-1)
            self._core.set_state(p, s, a.view(np.uint8))
        self._core.step_count = int(d["step"])
        self.lr = float(d["lr"])
        if self.model.dp is not None:
            self.model.dp.release_state(self._core)


class Adam(Optimizer):
    """torch.optim.Adam: weight decay added to the gradient (L2)."""

    KIND: Literal["adam", "adamw"] = "adam"

    def __init__(
        self,
        model: GPT2LMHead,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(
            model,
            self.KIND,
            lr,
            weight_decay,
            beta1=float(betas[0]),
            beta2=float(betas[1]),
            eps=float(eps),
        )


class AdamW(Adam):
    """torch.optim.AdamW: decoupled weight decay (0.01 by default, as torch's)."""

    KIND = "adamw"

    def __init__(
        self,
        model: GPT2LMHead,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
    ) -> None:
        super().__init__(model, lr, betas, eps, weight_decay)


class SGD(Optimizer):
    """torch.optim.SGD with momentum, dampening and Nesterov."""

    def __init__(
        self,
        model: GPT2LMHead,
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(
            model,
            "sgd",
            lr,
            weight_decay,
            momentum=float(momentum),
            dampening=float(dampening),
            nesterov=bool(nesterov),
        )


def clip_grad_norm(model: GPT2LMHead, max_norm: float) -> float:
    """Scales all gradients so that their global 2-norm is at most max_norm
    (torch.nn.utils.clip_grad_norm_); returns the norm before clipping."""
    return model.clip_grad_norm(max_norm)
