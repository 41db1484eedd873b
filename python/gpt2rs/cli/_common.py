"""What every gpt2rs console script shares: an argument parser whose errors
are one line and that takes NNTile's --under_score spelling, a help formatter
that shows each default once, the environment-to-flag mapping, and the model
flags (precision, tiling) that become one ModelOptions."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from ..options import PRECISIONS, TILE_AXES, WHOLE, ModelOptions


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line on stderr, no usage dump."""
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: Any = None
    ) -> tuple[argparse.Namespace, list[str]]:
        argv = sys.argv[1:] if args is None else list(args)
        return super().parse_known_args(self._dashed(argv), namespace)

    def _dashed(self, argv: list[str]) -> list[str]:
        """--foo_bar -> --foo-bar for every known option (NNTile's spelling)."""
        known = set(self._option_string_actions)
        out: list[str] = []
        for i, tok in enumerate(argv):
            if tok == "--":
                return out + argv[i:]
            if tok.startswith("--") and "_" in tok:
                name, eq, val = tok.partition("=")
                dashed = name.replace("_", "-")
                if dashed in known:
                    tok = dashed + eq + val
            out.append(tok)
        return out


class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """argparse's "(default: X)", except where the help already says its
    default (an environment variable, or a value that depends on the machine)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.help and "default:" in action.help:
            return action.help
        if action.default == "" and action.help and "%(default)" not in action.help:
            return action.help + " (default: '')"
        return super()._get_help_string(action)


# -- the environment (StarPU's and NNTile's variables) ---------------------------


def env_int(name: str) -> int | None:
    """The integer in $name; None when unset or blank; ValueError naming it otherwise."""
    v = os.environ.get(name, "").strip()
    if not v:
        return None
    try:
        return int(v)
    except ValueError:
        raise ValueError(f"environment variable {name}={v!r} is not an integer") from None


def env_flag(name: str) -> bool | None:
    """$name as a switch (0/false/no/off are off); None when unset or blank."""
    v = os.environ.get(name)
    if v is None or v.strip() == "":
        return None
    return v.strip().lower() not in ("0", "false", "no", "off")


def _env_str(name: str) -> str | None:
    v = os.environ.get(name, "").strip()
    return v or None


def _env_trace(name: str) -> str | None:
    # StarPU's FxT switch; our trace is one Chrome JSON file under its prefix.
    if not env_flag(name):
        return None
    return os.path.join(os.environ.get("STARPU_FXT_PREFIX", "") or ".", "gpt2rs.trace.json")


#: Flag destination -> (variable, reader): StarPU's and NNTile's environment,
#: read only for a flag the command line left unset (flags win).
ENVIRONMENT: dict[str, tuple[str, Callable[[str], Any]]] = {
    "ncpu": ("STARPU_NCPU", env_int),
    "ncuda": ("STARPU_NCUDA", env_int),
    "scheduler": ("STARPU_SCHED", _env_str),
    "perf_model_dir": ("STARPU_PERF_MODEL_DIR", _env_str),
    "trace": ("STARPU_FXT_TRACE", _env_trace),
    "quiet": ("STARPU_SILENT", env_flag),
    "logger": ("NNTILE_LOGGER", env_flag),
    "logger_server_addr": ("NNTILE_LOGGER_SERVER_ADDR", _env_str),
    "logger_server_port": ("NNTILE_LOGGER_SERVER_PORT", env_int),
}


def apply_environment(ns: argparse.Namespace, defaults: dict[str, Any]) -> None:
    """Fills each ENVIRONMENT flag of `ns` that is None from its variable,
    else from `defaults`; a malformed variable is a ValueError naming it."""
    for dest, (var, read) in ENVIRONMENT.items():
        if getattr(ns, dest, "absent") is None:
            v = read(var)
            setattr(ns, dest, defaults.get(dest) if v is None else v)


def restrict(v: str) -> str | None:
    """--restrict's type: cpu, cuda, or None/'' for every kind."""
    if v.lower() in ("none", ""):
        return None
    if v not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"invalid choice: {v!r} (choose from cpu, cuda, None)")
    return v


# -- the model flags -----------------------------------------------------------


def add_model_flags(
    group: argparse._ArgumentGroup, ap: argparse.ArgumentParser, *, training: bool
) -> None:
    """--dtype (and for training --recompute, --dropout) into `group`, and a
    group of the six --*-tile flags; `model_options` reads them back."""
    group.add_argument(
        "--dtype",
        choices=PRECISIONS,
        default=ModelOptions.dtype,
        help="precision mode (on the CPU the fast modes compute in fp32)",
    )
    if training:
        group.add_argument(
            "--recompute",
            action="store_true",
            help="recompute activations in backward (less memory)",
        )
        group.add_argument(
            "--dropout",
            type=float,
            default=-1.0,
            help="dropout for all three of the config's pdrops (-1: the config's values; 0: off)",
        )
    tiles = ap.add_argument_group(
        "tiling (default: cut from the shapes and the CPU workers so every worker stays busy; -1 = untiled)"
    )
    for name, axis in TILE_AXES.items():
        tiles.add_argument(
            "--" + name.replace("_", "-"),
            type=int,
            default=None,
            metavar="N",
            help=f"tile size along {axis} (default: chosen)",
        )


def model_options(ns: argparse.Namespace) -> ModelOptions:
    """The model flags as a ModelOptions; NNTile's -1 (untiled, the config's
    dropout) ends here. A bad value is a ValueError naming its flag."""
    tiles: dict[str, int | str | None] = {}
    for name in TILE_AXES:
        v = getattr(ns, name)
        if v is not None and v != -1 and v < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1 or -1 (untiled), got {v}")
        tiles[name] = WHOLE if v == -1 else v
    dropout = getattr(ns, "dropout", -1.0)
    if not (dropout == -1 or 0 <= dropout < 1):
        raise ValueError(f"--dropout must be in [0, 1) or -1 (the config's), got {dropout}")
    return ModelOptions.of(
        dtype=ns.dtype,
        recompute=getattr(ns, "recompute", False),
        dropout=None if dropout == -1 else dropout,
        **tiles,
    )
