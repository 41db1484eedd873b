"""The plan of a training run: every option, file and checkpoint checked
before anything is written, then the runtime, model and optimizer made."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from .. import checkpoint as ckpt_io
from .. import dist, hub, mpi
from .._gpt2rs import DistError, Runtime
from ..config import GPT2Config
from ..configs import GPT2_DEFAULT_CONFIG
from ..data import TokenFile
from ..model import GPT2LMHead
from .options import SCHEDULERS, TrainError, TrainOptions
from .report import log, model_flops_per_token


def _dataset_file(dataset_path: str, name: str) -> Path:
    """NNTile joins --dataset-path and --dataset-file; an absolute file or one
    that exists as given is taken as is."""
    p = Path(name).expanduser()
    if p.is_absolute() or (not Path(dataset_path, name).exists() and p.exists()):
        return p
    return Path(dataset_path).expanduser() / name


def _file_identity(path: Path) -> str:
    """Size and a hash of the first and last MiB: enough to tell two data
    files apart without reading gigabytes on every rank."""
    h = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        h.update(f.read(1 << 20))
    return f"{size}:{h.hexdigest()}"


def default_run_name() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{socket.gethostname().split('.')[0]}-{os.getpid()}"


class Plan:
    """The data, checkpoint to resume, outputs, runtime, model and optimizer
    of one run, from TrainOptions.

    `build()` raises TrainError, DataError, WeightsError, CheckpointError or
    OSError with a one-line message, before anything is written; what it
    holds by then (the checkpoint root's lock, the runtime) `release()` lets go.
    """

    def __init__(self, opts: TrainOptions) -> None:
        self.opts = opts
        self.world = dist.World()
        self.gpu_notice: str | None = None
        self.lock: Path | None = None
        self.runtime: Runtime | None = None
        self.first_gpu = 0

    def _gpus(self) -> int:
        """GPUs to train on: --ncuda, else every visible one; none with --restrict cpu."""
        from gpt2rs import cuda

        if self.opts.restrict not in (None, "cpu", "cuda"):
            raise TrainError(f"--restrict must be cpu, cuda or None, got {self.opts.restrict!r}")
        try:
            n, notice = cuda.choose_gpus(self.opts.restrict, self.opts.ncuda)
        except (ValueError, cuda.CudaError) as e:
            msg = str(e).replace("restrict ", "--restrict ").replace("ncuda ", "--ncuda ")
            raise TrainError(
                msg + ("; use --restrict cpu" if isinstance(e, cuda.CudaError) else "")
            ) from None
        # Said once training starts, so that a bad option stays one error line.
        self.gpu_notice = notice
        return n

    def _load_config(self) -> GPT2Config:
        o = self.opts
        self.ckpt_dir: Path | None = None
        self.remote_dir: Path | None = None
        if o.checkpoint_path:
            self.ckpt_dir = ckpt_io.resolve(o.checkpoint_path)
            try:
                config = GPT2Config.from_json_file(self.ckpt_dir / "config.json")
            except (FileNotFoundError, ValueError) as e:
                raise ckpt_io.CheckpointError(f"checkpoint {self.ckpt_dir}: {e}") from None
            if o.config_path:
                given = GPT2Config.coerce(o.config_path)
                if not given.same_network(config):
                    raise ckpt_io.CheckpointError(
                        f"checkpoint {self.ckpt_dir} holds a different model than --config-path {o.config_path}"
                    )
            return config
        if o.pretrained == "remote":
            self.remote_dir = hub.resolve(o.remote_model_name, cache_dir=o.model_path or None)
            return GPT2Config.from_json_file(self.remote_dir / "config.json")
        return GPT2Config.coerce(o.config_path or GPT2_DEFAULT_CONFIG)

    def build(self) -> None:
        """Every check, then the runtime, model and optimizer; see the class."""
        o = self.opts
        # Before any data or weights are touched: a GPU run without a GPU fails first.
        self.ncuda = self._gpus()
        o.validate()
        self.world = self._join()
        o.check_split(self.world.size)
        self.minibatch = o.minibatch_for(self.world.size)
        config = self._load_config()
        # A resumed run keeps its checkpoint's dropout, a remote model its own config.
        model_opts = replace(o.model, deterministic=True)
        if self.ckpt_dir is not None or self.remote_dir is not None:
            if o.model.dropout is not None and self.remote_dir is not None:
                log.warning(
                    "--dropout applies to --pretrained local runs; the remote model's config is kept"
                )
            model_opts = replace(model_opts, dropout=None)
        if o.seq_len > config.n_positions:
            raise TrainError(
                f"--seq-len {o.seq_len} exceeds the model's n_positions = {config.n_positions}"
            )
        self.config = config

        # Data.
        self.data_file = _dataset_file(o.dataset_path, o.dataset_file)
        self.data = TokenFile(self.data_file, config.vocab_size)
        self.nwindows = int(self.data.windows(o.seq_len))
        self.steps_per_epoch = self.nwindows // o.batch_size
        if self.steps_per_epoch < 1:
            raise TrainError(
                f"{self.data_file} has {len(self.data)} tokens = {self.nwindows} windows of --seq-len {o.seq_len} + 1, "
                f"fewer than one --batch-size {o.batch_size}"
            )
        self.total_steps = o.max_steps if o.max_steps > 0 else o.nepochs * self.steps_per_epoch
        self.val = None
        if o.val_file:
            self.val_path = _dataset_file(o.dataset_path, o.val_file)
            self.val = TokenFile(self.val_path, config.vocab_size)
            if self.val.windows(o.seq_len) < 1:
                raise TrainError(
                    f"--val-file {self.val_path} is shorter than one window of --seq-len {o.seq_len} + 1"
                )

        self._check_ranks_agree()

        # Checkpoint to resume from: read and check it fully before writing anything.
        self.resume: ckpt_io.Checkpoint | None = None
        if self.ckpt_dir is not None:
            self.resume = ckpt_io.load(self.ckpt_dir)
            self._check_resume(self.resume)

        # Every output location must be writable before the first step, and
        # the checkpoint root this run's alone. Rank 0 writes them all.
        self.run_name = o.run_name or default_run_name()
        self.log_dir: Path | None = None
        if self.world.is_root:
            ckpt_io.check_writable(o.save_checkpoint_path)
            self.lock = ckpt_io.acquire_lock(o.save_checkpoint_path)
            if o.logger and (o.log_dir or not o.logger_server_addr):
                self.log_dir = Path(o.log_dir or Path("runs") / self.run_name)
                ckpt_io.check_writable(self.log_dir)
            for f in (o.metrics_file, o.trace):
                if f:
                    ckpt_io.check_writable(Path(f).expanduser().resolve().parent)

        # Runtime, model, optimizer.
        import gpt2rs

        self.runtime = gpt2rs.Runtime(
            ncuda=self.ncuda,
            first_gpu=self.first_gpu,
            restrict=o.restrict if self.ncuda else None,
            ncpu=o.ncpu,
            scheduler=SCHEDULERS[o.scheduler],
            perf_model_dir=o.perf_model_dir or None,
            trace=bool(o.trace),
            comm=self.world.size > 1,
        )
        if self.resume is not None:
            self.model = GPT2LMHead(config, model_opts, runtime=self.runtime)
            try:
                self.model.load_state_dict(self.resume.model_state)
            except hub.WeightsError as e:
                raise ckpt_io.CheckpointError(f"checkpoint {self.resume.path}: {e}") from None
        elif self.remote_dir is not None:
            self.model = GPT2LMHead.from_pretrained(
                self.remote_dir, model_opts, runtime=self.runtime
            )
        else:
            self.model = GPT2LMHead.from_config(
                config, model_opts, seed=o.seed, runtime=self.runtime
            )
        # The model's config carries the dropout it trains with (and checkpoints save).
        self.config = self.model.config
        self.optimizer = self._make_optimizer()
        self.rng = np.random.default_rng(o.seed)
        self.step = 0
        if self.resume is not None:
            try:
                self.optimizer.load_state_dict(self.resume.optimizer_state)
            except (ValueError, KeyError, TypeError) as e:
                raise ckpt_io.CheckpointError(
                    f"checkpoint {self.resume.path}: optimizer state: {e}"
                ) from None
            self.rng.bit_generator.state = self.resume.trainer_state["rng_state"]
            self.step = self.resume.step
        self.start_step = self.step
        self.n_params = self.model.num_parameters()
        self.flops_per_token = model_flops_per_token(config, self.n_params, o.seq_len)

    def _join(self) -> dist.World:
        """The ranks of this job (a world of one when not launched by an MPI
        launcher, with --dist-init auto)."""
        o = self.opts
        try:
            w = dist.init(
                zero_stage=o.zero_stage,
                method=o.dist_init,
                default_runtime=False,  # the plan makes its own
            )
        except DistError as e:
            raise TrainError(str(e)) from None
        if w.size > 1 and self.ncuda:
            self._gpu_of_rank(w)
        return w

    def _gpu_of_rank(self, w: dist.World) -> None:
        """Data-parallel on GPUs: one GPU per rank (NCCL's rule), the one
        of the rank's local rank on its machine, and NCCL installed."""
        if self.opts.ncuda is not None and self.opts.ncuda > 1:
            raise TrainError(
                f"data-parallel training uses one GPU per rank (NCCL); start one rank per GPU "
                f"with --ncuda 1, not --ncuda {self.opts.ncuda}"
            )
        if w.local_rank >= self.ncuda:
            raise TrainError(
                f"rank {w.rank} is rank {w.local_rank} of its machine, which has {self.ncuda} "
                "visible GPU(s): start at most one rank per GPU, or use --restrict cpu"
            )
        try:
            mpi.nccl_library_path()
        except DistError as e:
            raise TrainError(str(e)) from None
        self.first_gpu, self.ncuda = w.local_rank, 1

    def _check_ranks_agree(self) -> None:
        """Every rank must run the same options on the same data: compared by
        a hash of the options and of the data file's size and ends."""
        if self.world.size == 1:
            return
        what = json.dumps(asdict(self.opts), sort_keys=True, default=str)
        what += "|" + _file_identity(self.data_file)
        bad = self.world.disagreeing(what)
        if bad:
            who = f"ranks {', '.join(map(str, bad))} run" if len(bad) > 1 else f"rank {bad[0]} runs"
            raise TrainError(
                f"{who} other options or data than rank 0 "
                "(every rank needs the same command line and the same --dataset-file)"
            )

    def _check_resume(self, ck: ckpt_io.Checkpoint) -> None:
        o, st = self.opts, ck.trainer_state
        problems = []
        recorded = st.get("run", {})
        for key, now in (
            ("seq_len", o.seq_len),
            ("batch_size", o.batch_size),
            ("seed", o.seed),
            ("windows", self.nwindows),
        ):
            if key in recorded and recorded[key] != now:
                what = "dataset windows" if key == "windows" else "--" + key.replace("_", "-")
                problems.append(f"{what} {recorded[key]} there, {now} here")
        kind = ck.optimizer_state.get("kind")
        if kind != o.optimizer:
            problems.append(f"--optimizer {kind} there, {o.optimizer} here")
        if problems:
            raise ckpt_io.CheckpointError(
                f"checkpoint {ck.path} does not match this run ({'; '.join(problems)}); "
                f"to start a new run from its weights use --pretrained remote --remote-model-name {ck.path}"
            )
        spe = recorded.get("steps_per_epoch", self.steps_per_epoch)
        step = ck.step
        if st["epoch"] != step // spe or st["position"] != (step % spe) * o.batch_size:
            raise ckpt_io.CheckpointError(
                f"checkpoint {ck.path} is corrupt: its step, epoch and position disagree"
            )

    def _make_optimizer(self) -> Any:
        import gpt2rs

        o = self.opts
        if o.optimizer == "sgd":
            return gpt2rs.SGD(
                self.model, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay or 0.0
            )
        cls = gpt2rs.AdamW if o.optimizer == "adamw" else gpt2rs.Adam
        wd = (
            o.weight_decay
            if o.weight_decay is not None
            else (0.01 if o.optimizer == "adamw" else 0.0)
        )
        return cls(self.model, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, weight_decay=wd)

    def release(self) -> None:
        """Shuts the runtime down and frees the checkpoint root; idempotent."""
        if self.runtime is not None and not self.runtime.is_shut_down:
            self.runtime.shutdown()
        if self.lock is not None:
            ckpt_io.release_lock(self.lock)
            self.lock = None
