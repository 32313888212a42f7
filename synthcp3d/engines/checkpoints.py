"""Checkpoint helpers shared by every workflow: :func:`load_weights`, :func:`latest_checkpoint` and
:func:`run_checkpointed`, the checkpointed, resumable and interruptible run of an ignite engine that the segmenter,
SPADE, comparator and VAE trainers share.

Files in ``model_dir`` (each a ``{name: obj.state_dict()}`` of the trainer's ``state``, written atomically):

* ``checkpoint_epoch=N.pt`` / ``checkpoint_iteration=N.pt`` every ``every`` epochs / iterations; only the newest
  ``keep`` of them stay, counted across runs (those of earlier, interrupted runs are deleted too);
* ``checkpoint_final.pt`` when a run ends: complete, stopped by SIGINT (Ctrl-C) / SIGTERM, or failed.

Interrupts lose nothing: the first SIGINT / SIGTERM lets the current iteration (at an epoch's end: its validation
and epoch checkpoint) finish, then ``checkpoint_final.pt`` is written and :class:`TrainingInterrupted` (a
``KeyboardInterrupt``) is raised; a second signal stops at once. Any other exception also writes
``checkpoint_final.pt`` first (at the last completed iteration), then propagates. Besides networks, optimizers and
the engine state, a checkpoint holds the random generators' states (torch, NumPy, Python, the loader's shuffling
generator and the MONAI transforms' generators of its dataset) and a resumed run replays the current epoch's loader
up to the saved iteration, so a run that is interrupted and resumed gives the same weights as one that is not
(exceptions: a second signal or an error that cut an iteration short, distributed runs, and one-off iterators run
without ``replay_from_start``, which continue with a fresh data order). The random states sit in the engine's entry
(``"rng"``); resuming sets the process's global generators to them.

A one-off iterator (e.g. SPADE's endless patch stream) cannot be rewound to its place, so ``replay_from_start``
makes it reproducible instead: the stream draws from generators of its own (torch's, NumPy's and Python's global
generators hold the stream's states while it makes a batch, the training's otherwise; the stream's are seeded from
one draw of each at the start of a run, and saved as ``rng["stream"]`` together with the states of the data's own
generators at that start). A resumed run restores those start states and draws and discards the batches already
trained on (iteration count x 1, logged as ``replaying N batches of the data stream``) from the fresh iterator it
is given, then continues the training's random streams: its batches and weights are those of an uninterrupted run.
DataLoader workers are covered (their seeds derive from the stream's torch generator when an iterator over the
loader is made); out-of-order delivery (``DataLoader(in_order=False)``) is not: do not use the option there.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import shutil
import signal
import threading
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from ignite.engine import Engine, Events

__all__ = ["FINAL_CHECKPOINT", "TrainingInterrupted", "checkpoint_files", "latest_checkpoint", "load_weights",
           "prune_checkpoints", "run_checkpointed"]  # fmt: skip

logger = logging.getLogger(__name__)

FINAL_CHECKPOINT = "checkpoint_final.pt"
_PERIODIC = re.compile(r"checkpoint_(?:epoch|iteration)=(\d+)\.pt")


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by SIGINT / SIGTERM after writing a resumable checkpoint (a ``KeyboardInterrupt``, so
    code that handles Ctrl-C handles it too)."""


def _age(path: Path) -> tuple[int, int, int]:
    """Sort key, oldest first: modification time, then (same tick) periodic before final, then the step."""
    m = _PERIODIC.fullmatch(path.name)
    return path.stat().st_mtime_ns, int(m is None), int(m.group(1)) if m else 0


def checkpoint_files(model_dir: str | Path) -> list[Path]:
    """The ``checkpoint_*.pt`` files in ``model_dir``, oldest first (by modification time)."""
    return sorted(Path(model_dir).glob("checkpoint_*.pt"), key=_age)


def latest_checkpoint(model_dir: str | Path) -> Path | None:
    """The most recently written ``checkpoint_*.pt`` in ``model_dir`` (None if there is none)."""
    found = checkpoint_files(model_dir)
    return found[-1] if found else None


def prune_checkpoints(model_dir: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` periodic checkpoints (``checkpoint_{epoch,iteration}=N.pt``) of
    ``model_dir``, whichever run wrote them, and leftover temporary files; ``checkpoint_final.pt`` and weight files
    (``model.pt``, ...) are never touched. Returns the deleted paths."""
    model_dir = Path(model_dir)
    periodic = [p for p in checkpoint_files(model_dir) if _PERIODIC.fullmatch(p.name)]
    doomed = periodic[: max(0, len(periodic) - max(1, int(keep)))] + list(model_dir.glob(".checkpoint_*.pt.tmp"))
    for path in doomed:
        path.unlink(missing_ok=True)
    return doomed


def load_weights(network: torch.nn.Module, path: str | Path, hint: str = "") -> torch.nn.Module:
    """Load a ``state_dict`` file into ``network`` and return the network.

    Raises:
        FileNotFoundError: naming the missing file and, with ``hint``, the command that produces it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights at {path}" + (f": {hint}" if hint else ""))
    network.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return network


# ------------------------------------------------------------------------------------------ random generators
def _np_state(state: tuple) -> tuple:
    """A NumPy ``RandomState.get_state()`` tuple with its key as an int64 tensor (``weights_only`` loadable)."""
    name, key, pos, has_gauss, gauss = state
    return name, torch.from_numpy(np.asarray(key, dtype=np.int64)), int(pos), int(has_gauss), float(gauss)


def _np_tuple(state: Sequence) -> tuple:
    name, key, pos, has_gauss, gauss = state
    key = key.cpu().numpy() if isinstance(key, torch.Tensor) else key
    return name, np.asarray(key, dtype=np.uint32), int(pos), int(has_gauss), float(gauss)


def _transform_states(obj: Any, found: dict[int, np.random.RandomState], seen: set[int], depth: int = 0) -> None:
    """Collect the distinct ``R`` generators of the MONAI ``Randomizable`` objects in ``obj`` (a transform chain:
    nested ``Compose`` lists and the inner transforms dictionary transforms delegate to)."""
    if depth > 6 or id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, (list, tuple)):
        for item in obj:
            _transform_states(item, found, seen, depth + 1)
        return
    from monai.transforms import Randomizable

    if not isinstance(obj, Randomizable):
        return
    if isinstance(getattr(obj, "R", None), np.random.RandomState):
        found.setdefault(id(obj.R), obj.R)
    for value in vars(obj).values():
        if isinstance(value, (Randomizable, list, tuple)):
            _transform_states(value, found, seen, depth + 1)


class _RandomStates:
    """Snapshots of every random generator a training run draws from: torch's (and CUDA's), NumPy's and Python's
    global ones plus the shuffling ``generator`` and the dataset transforms' generators of ``data``."""

    def __init__(self, data: Iterable) -> None:
        gen = getattr(data, "generator", None)
        self.generators = [gen] if isinstance(gen, torch.Generator) else []
        found: dict[int, np.random.RandomState] = {}
        _transform_states(getattr(getattr(data, "dataset", None), "transform", None), found, set())
        self.transforms = list(found.values())

    @staticmethod
    def capture_global() -> dict:
        """torch's (CPU), NumPy's and Python's global generators."""
        return {"torch": torch.get_rng_state(), "numpy": _np_state(np.random.get_state()),  # noqa: NPY002 (global)
                "python": random.getstate()}  # fmt: skip

    @staticmethod
    def restore_global(snap: Mapping) -> None:
        torch.set_rng_state(snap["torch"].cpu())
        np.random.set_state(_np_tuple(snap["numpy"]))  # noqa: NPY002 (the global generator is what is restored)
        random.setstate(tuple(tuple(s) if isinstance(s, list) else s for s in snap["python"]))

    def capture(self) -> dict:
        snap = {**self.capture_global(), "generators": [g.get_state() for g in self.generators],
                "transforms": [_np_state(r.get_state()) for r in self.transforms]}  # fmt: skip
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            snap["cuda"] = torch.cuda.get_rng_state_all()
        return snap

    def restore(self, snap: Mapping) -> None:
        gens, tfs = snap.get("generators", []), snap.get("transforms", [])
        if len(gens) != len(self.generators) or len(tfs) != len(self.transforms):
            warnings.warn("the checkpoint's random generators do not match this data loader (was it changed?): "
                          "only the global generators are restored", RuntimeWarning, stacklevel=2)  # fmt: skip
            gens, tfs = [], []
        self.restore_global(snap)
        if "cuda" in snap and torch.cuda.is_available() and len(snap["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in snap["cuda"]])
        for g, s in zip(self.generators, gens, strict=False):
            g.set_state(s.cpu())
        for r, s in zip(self.transforms, tfs, strict=False):
            r.set_state(_np_tuple(s))


class _Drained:
    """An epoch's iterator over ``n`` batches that asks ``inner`` for one more right after the last: a torch
    sampler draws its next permutation when asked past its end, which otherwise happens lazily at the start of the
    next epoch, after the epoch's checkpoint; drawn here, it is in the checkpoint's generator state."""

    def __init__(self, inner: Iterator, n: int) -> None:
        self.inner, self.left, self.peeked = inner, n, []

    def __iter__(self) -> Iterator:
        return self

    def __next__(self) -> Any:
        if self.peeked:
            return self.peeked.pop()
        item = next(self.inner)
        self.left -= 1
        if self.left == 0:
            with contextlib.suppress(StopIteration):
                self.peeked.append(next(self.inner))  # more than len(): keep it for the next call
        return item


class _EpochData:
    """``data`` that snapshots the random generators whenever an epoch's iterator is made, and whose first
    iterator after a mid-epoch resume is the saved epoch's, advanced to the saved iteration."""

    def __init__(self, data: Iterable, run: _Run) -> None:
        self.data, self.run = data, run

    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator:
        replay, self.run.replay = self.run.replay, None
        if replay is None:
            self.run.rng_epoch = self.run.rng.capture()
            return _Drained(iter(self.data), len(self))
        epoch_rng, skip, now = replay
        self.run.rng.restore(epoch_rng)
        self.run.rng_epoch = epoch_rng
        it = _Drained(iter(self.data), len(self))
        for _ in range(skip):  # the batches the interrupted run already trained on
            next(it)
        self.run.rng.restore(now)
        return it


class _Stream:
    """A one-off data iterator with random generators of its own (``replay_from_start``): while it makes a batch,
    torch's (CPU), NumPy's and Python's global generators hold the stream's states, otherwise the training's, so
    its batches do not depend on what the training draws and replaying it from its start states repeats them."""

    def __init__(self, data: Iterator) -> None:
        self.data, self.own = data, _RandomStates(data)  # own: the data's shuffling / transform generators
        self.start: dict | None = None  # the stream's states at its start (saved in checkpoints)
        self.states: dict | None = None  # the stream's global states between batches

    def begin(self, start: Mapping | None = None) -> None:
        """Start the stream at ``start`` (a checkpoint's), or at new states seeded from one draw of each global
        generator (the data's own generators as they are)."""
        if start is None:
            seeds = (int(torch.empty((), dtype=torch.int64).random_()),
                     int(np.random.randint(2**32, dtype=np.uint64)), random.getrandbits(64))  # noqa: NPY002 # fmt: skip
            start = {"torch": torch.Generator().manual_seed(seeds[0]).get_state(),
                     "numpy": _np_state(np.random.RandomState(seeds[1]).get_state()),
                     "python": random.Random(seeds[2]).getstate(),  # noqa: S311 (not cryptographic)
                     "generators": [g.get_state() for g in self.own.generators],
                     "transforms": [_np_state(r.get_state()) for r in self.own.transforms]}  # fmt: skip
        else:
            outer = self.own.capture_global()
            self.own.restore(start)  # the data's own generators (the global ones are put back below)
            self.own.restore_global(outer)
        self.start, self.states = dict(start), dict(start)

    def __iter__(self) -> Iterator:
        return self

    def __next__(self) -> Any:
        outer = self.own.capture_global()
        self.own.restore_global(self.states)
        try:
            return next(self.data)
        finally:
            self.states = self.own.capture_global()
            self.own.restore_global(outer)


# ------------------------------------------------------------------------------------------ the checkpointed run
def _length(data: Iterable) -> int | None:
    try:
        return len(data)  # type: ignore[arg-type]
    except TypeError:  # no length (an iterator, an iterable dataset)
        return None


class _Run:
    """State of one :func:`run_checkpointed` call (handlers, signal flag, random-generator snapshots)."""

    def __init__(self, engine: Engine, data: Iterable, state: Mapping[str, Any], model_dir: Path, *, every: int,
                 event: str, epoch_length: int, keep: int, write: bool, map_location: Any, desc: str,
                 replay_from_start: bool = False) -> None:  # fmt: skip
        self.engine, self.model_dir, self.every, self.event = engine, model_dir, max(1, int(every)), event
        self.keep, self.write, self.map_location, self.desc = keep, write, map_location, desc
        self.state = dict(state)
        keys = [k for k, v in self.state.items() if v is engine]
        self.engine_key = keys[0] if keys else "engine"
        self.state.setdefault(self.engine_key, engine)
        import torch.distributed as dist

        self.world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        # a stream's own generators are its (_Stream), the training's are the global ones
        self.stream = _Stream(data) if replay_from_start else None  # type: ignore[arg-type]
        self.rng = _RandomStates(None if self.stream else data)  # type: ignore[arg-type]
        # an epoch can be replayed if it is one pass over re-iterable data (not a one-off iterator / partial pass)
        self.replayable = self.stream is None and not isinstance(data, Iterator) and _length(data) == epoch_length
        self.data = self.stream or (_EpochData(data, self) if self.replayable else data)
        self.rng_now: dict | None = None
        self.rng_epoch: dict | None = None
        self.replay: tuple | None = None
        self.completed = 0
        self.stop: str | None = None

    # ------------------------------------------------------------------ files
    def save(self, name: str) -> Path:
        path = self.model_dir / name
        out = {k: obj.state_dict() for k, obj in self.state.items()}
        rng = {"now": self.rng_now, "epoch": self.rng_epoch}
        if self.stream is not None:
            rng["stream"] = self.stream.start
        out[self.engine_key] = {**out[self.engine_key], "rng": rng}
        tmp = path.with_name(f".{name}.tmp")
        torch.save(out, tmp)
        os.replace(tmp, path)  # atomic: a kill while writing leaves the previous file intact
        return path

    def save_final(self) -> Path | None:
        if not self.write:
            return None
        path = self.save(FINAL_CHECKPOINT)
        prune_checkpoints(self.model_dir, self.keep)
        return path

    def how_to_start_fresh(self) -> str:
        return (f"pass resume=False to train from scratch (its checkpoints replace these), or delete "
                f"{self.model_dir} or use a new output directory")  # fmt: skip

    def resume(self, total: int, epoch_length: int, limit: str) -> tuple[Path | None, dict | None]:
        """Load the newest readable checkpoint into ``state``; returns ``(path, its random-generator states)``."""
        files = checkpoint_files(self.model_dir)
        for path in reversed(files):
            try:
                ckpt = torch.load(path, map_location=self.map_location, weights_only=True)
                if not isinstance(ckpt, Mapping):
                    raise TypeError(f"holds a {type(ckpt).__name__}, not a dict")
            except Exception as exc:  # corrupt / truncated file: try the previous one
                why = (str(exc).strip().splitlines() or [""])[0][:200]
                warnings.warn(f"cannot read checkpoint {path} ({type(exc).__name__}: {why}); trying an older one",
                              RuntimeWarning, stacklevel=3)  # fmt: skip
                continue
            missing = [k for k in self.state if k not in ckpt]
            if missing:
                raise ValueError(f"checkpoint {path} has no {missing}: not written by this training; "
                                 f"{self.how_to_start_fresh()}")  # fmt: skip
            eng = dict(ckpt[self.engine_key])
            rng = eng.pop("rng", None)
            it, saved_length = int(eng["iteration"]), int(eng["epoch_length"])
            if it > total:
                raise ValueError(f"checkpoint {path} is at epoch {it // saved_length}, iteration {it}: beyond the "
                                 f"requested {limit} (it was written by a longer run). To continue that run, ask "
                                 f"for at least as many; to train {limit} instead, {self.how_to_start_fresh()}")
            for k, obj in self.state.items():
                try:
                    obj.load_state_dict(eng if k == self.engine_key else ckpt[k])
                except Exception as exc:
                    raise ValueError(f"checkpoint {path} does not fit {k!r} ({exc}); {self.how_to_start_fresh()}") \
                        from exc  # fmt: skip
            state = self.engine.state
            if saved_length != epoch_length:
                logger.warning("%s: the data now has %d batches per epoch, the checkpoint %d", self.desc,
                               epoch_length, saved_length)  # fmt: skip
            state.epoch_length, state.epoch = epoch_length, it // epoch_length
            logger.info("resuming %s from %s: epoch %d, iteration %d", self.desc, path, state.epoch, it)
            return path, (rng if saved_length == epoch_length else None)
        if files:
            warnings.warn(f"no checkpoint in {self.model_dir} could be read: training {self.desc} from scratch",
                          RuntimeWarning, stacklevel=3)  # fmt: skip
        return None, None

    def restore_rng(self, rng: Mapping | None) -> None:
        """Continue the saved random streams (single process only: ranks would all get rank 0's)."""
        if self.stream is not None:
            self.start_stream(rng)
        if rng is None or rng.get("now") is None or self.world > 1:
            return
        self.rng_epoch = rng.get("epoch")
        skip = self.engine.state.iteration % self.engine.state.epoch_length
        if skip and self.replayable and self.rng_epoch is not None:
            self.replay = (self.rng_epoch, skip, rng["now"])
        else:
            self.rng.restore(rng["now"])
        self.rng_now = rng["now"]

    def start_stream(self, rng: Mapping | None) -> None:
        """Start the data stream: fresh, or (resumed) at the checkpoint's stream start, replayed up to the saved
        iteration."""
        assert self.stream is not None
        done = self.completed  # the resumed iteration (0 for a fresh run)
        start = rng.get("stream") if rng is not None and self.world == 1 else None
        if done and start is None:
            why = ("a distributed run" if self.world > 1 else "the checkpoint holds no data-stream state" if rng
                   else "the checkpoint's random states do not fit")  # fmt: skip
            warnings.warn(f"{self.desc}: {why}: the data stream is not replayed, the resumed run sees a fresh data "
                          "order", RuntimeWarning, stacklevel=3)  # fmt: skip
            done = 0
        self.stream.begin(start)
        if not done:
            return
        logger.info("%s: replaying %d batches of the data stream (the batches trained on before the checkpoint)",
                    self.desc, done)  # fmt: skip
        t0 = time.perf_counter()
        for _ in range(done):
            next(self.stream)
        logger.info("%s: replayed %d batches of the data stream in %.1f s", self.desc, done, time.perf_counter() - t0)

    # ------------------------------------------------------------------ handlers
    def on_signal(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.stop is not None:
            raise TrainingInterrupted(f"{name} again: {self.desc} stopped at once")
        self.stop = name
        logger.warning("%s: %s stops after the current iteration and writes a resumable checkpoint; send it again "
                       "to stop at once", name, self.desc)  # fmt: skip

    def check_stop(self, _: Engine | None = None) -> None:
        stop = self.stop is not None
        if self.world > 1:  # every rank stops at the same iteration, or the others would hang in a collective
            import torch.distributed as dist

            flag = torch.tensor([float(stop)])
            if dist.get_backend() == "nccl":
                flag = flag.cuda()
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stop = bool(flag.item())
        if stop:
            raise TrainingInterrupted(f"{self.stop or 'another rank was signalled'}: {self.desc} stopped")

    def iteration_completed(self, engine: Engine) -> None:
        self.completed = engine.state.iteration
        self.rng_now = self.rng.capture()
        if self.write and self.event == "iteration" and self.completed % self.every == 0:
            self.save(f"checkpoint_iteration={self.completed}.pt")
            prune_checkpoints(self.model_dir, self.keep)
        if self.completed % engine.state.epoch_length:  # an epoch's last iteration stops after EPOCH_COMPLETED
            self.check_stop()

    def epoch_completed(self, engine: Engine) -> None:
        self.rng_now = self.rng.capture()
        if self.write and self.event == "epoch" and engine.state.epoch % self.every == 0:
            self.save(f"checkpoint_epoch={engine.state.epoch}.pt")
            prune_checkpoints(self.model_dir, self.keep)
        self.check_stop()

    @contextlib.contextmanager
    def signals(self) -> Iterator[None]:
        """SIGINT / SIGTERM request a stop while the run lasts (main thread only); the old handlers come back."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in previous:
            signal.signal(s, self.on_signal)
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, signal.SIG_DFL if handler is None else handler)

    def stopped(self, exc: BaseException) -> None:
        """Write the resumable ``checkpoint_final.pt`` of a run that ``exc`` stopped (at its last completed
        iteration: an iteration cut short is trained again on resume; nothing before the first one)."""
        state = self.engine.state
        if not self.completed:
            return
        if state.iteration != self.completed:
            logger.warning("%s: iteration %d was cut short; the checkpoint resumes after iteration %d (weights or "
                           "normalisation statistics may hold part of the cut iteration)", self.desc, state.iteration,
                           self.completed)  # fmt: skip
            state.iteration, state.epoch = self.completed, self.completed // state.epoch_length
        try:
            path = self.save_final()
        except Exception as save_exc:  # keep the original exception
            logger.error("%s: could not write %s: %s", self.desc, FINAL_CHECKPOINT, save_exc)
            return
        if path is not None:
            how = "stopped" if isinstance(exc, KeyboardInterrupt) else f"failed ({type(exc).__name__}: {exc})"
            logger.warning("%s %s at epoch %d, iteration %d; resumable checkpoint %s (run again to continue)",
                           self.desc, how, state.epoch, state.iteration, path)  # fmt: skip


def run_checkpointed(
    engine: Engine,
    data: Iterable,
    state: Mapping[str, Any],
    model_dir: str | Path,
    *,
    every: int,
    event: Literal["epoch", "iteration"] = "iteration",
    max_epochs: int | None = None,
    max_iterations: int | None = None,
    epoch_length: int | None = None,
    keep: int = 2,
    resume: bool = True,
    write: bool = True,
    map_location: str | torch.device = "cpu",
    interruptible: Sequence[Engine] = (),
    desc: str = "training",
    replay_from_start: bool = False,
) -> int:
    """Run ``engine`` over ``data`` to ``max_epochs`` (or ``max_iterations``, a total) with checkpoints and resume.

    ``engine`` is a plain ignite ``Engine`` or a MONAI ``Workflow`` (e.g. ``SupervisedTrainer``, run through its
    own ``run()`` with ``data`` as its loader). Files, interrupts and random generators: see the module docstring.

    With ``resume`` the newest checkpoint that loads is restored first (an unreadable one is skipped with a
    warning naming it; if none loads, a warning and a fresh start) and the run continues from its iteration, logged
    as ``resuming <desc> from <file>: epoch E, iteration I``. A checkpoint already at the requested total means
    there is nothing left to train (the state is loaded, the engine does not run); one beyond it raises
    ``ValueError`` saying how to start fresh. A larger total than before trains the extra epochs / iterations.

    Args:
        state: ``{name: object with state_dict/load_state_dict}`` (networks, optimizers; the engine is added as
            ``"engine"`` unless already in it).
        every: checkpoint period in ``event`` units (``"epoch"`` or ``"iteration"``).
        epoch_length: iterations per epoch (default ``len(data)``; required for an iterator without length).
        keep: periodic checkpoints kept in ``model_dir`` (across runs).
        write: whether this process writes files (False on all but the main rank of a distributed run).
        interruptible: further engines (e.g. the validation evaluator) whose iterations also honour a stop request.
        desc: the run's name in logs.
        replay_from_start: ``data`` is a fresh, endless iterator (made anew by each call) whose batches depend
            only on how it was made and on the random generators: it draws from its own random streams and a
            resumed run replays it from its start to the saved iteration (see the module docstring). Without it a
            resumed one-off iterator just continues with a fresh data order.

    Returns:
        The iteration the run started from (0 for a fresh run).

    Raises:
        TrainingInterrupted: after SIGINT / SIGTERM, once ``checkpoint_final.pt`` is written.
        ValueError: a checkpoint beyond the requested total, or one that does not fit ``state``.
    """
    if (max_epochs is None) == (max_iterations is None):
        raise ValueError("give max_epochs or max_iterations")
    from monai.engines import Workflow

    is_workflow = isinstance(engine, Workflow)
    if is_workflow and max_iterations is not None:
        raise ValueError("a MONAI Workflow runs max_epochs")
    if replay_from_start and not isinstance(data, Iterator):
        raise ValueError("replay_from_start needs a one-off iterator (re-iterable data replays its epoch anyway)")
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    length = epoch_length if epoch_length is not None else _length(data)
    if length is None or length < 1:
        raise ValueError(f"no batches per epoch (len(data) = {length}): empty data, or give epoch_length")
    length = int(length)
    total = int(max_iterations) if max_iterations is not None else int(max_epochs) * length
    limit = f"max_iterations={max_iterations}" if max_iterations is not None else f"max_epochs={max_epochs}"
    run = _Run(engine, data, state, model_dir, every=every, event=event, epoch_length=length, keep=keep, write=write,
               map_location=map_location, desc=desc, replay_from_start=replay_from_start)  # fmt: skip
    path, rng = run.resume(total, length, limit) if resume else (None, None)
    start = run.completed = int(engine.state.iteration) if path is not None else 0
    if start >= total:
        final = model_dir / FINAL_CHECKPOINT
        if write and path is not None and path != final:  # e.g. killed after its last periodic checkpoint
            tmp = final.with_name(f".{final.name}.tmp")
            shutil.copyfile(path, tmp)
            os.replace(tmp, final)
        logger.info("%s: nothing left to train (iteration %d of %d)", desc, start, total)
        return start
    if path is not None or is_workflow:  # the requested total, in the engine's terms (a resumed state has the old)
        es = engine.state
        es.max_epochs, es.max_iters = (max_epochs, None) if max_iterations is None else (None, total)
        es.epoch_length = length
    run.restore_rng(rng)
    if run.rng_now is None:
        run.rng_now = run.rng.capture()
    engine.add_event_handler(Events.ITERATION_COMPLETED, run.iteration_completed)
    engine.add_event_handler(Events.EPOCH_COMPLETED, run.epoch_completed)
    for other in interruptible:
        other.add_event_handler(Events.ITERATION_COMPLETED, run.check_stop)
    loader = getattr(engine, "data_loader", None)
    try:
        with run.signals():
            try:
                if is_workflow:
                    engine.data_loader = run.data
                    engine.run()
                else:
                    engine.run(run.data, max_epochs=max_epochs, max_iters=max_iterations, epoch_length=length)
            except BaseException as exc:
                run.stopped(exc)
                raise
            # (the random states are those after the last iteration / epoch: COMPLETED handlers are not part of them)
            run.save_final()
            if run.stop is not None:  # signalled during the last iteration: complete, but stop the caller too
                raise TrainingInterrupted(f"{run.stop}: {desc} stopped after its last iteration")
    finally:
        if is_workflow:
            engine.data_loader = loader
        engine.remove_event_handler(run.iteration_completed, Events.ITERATION_COMPLETED)
        engine.remove_event_handler(run.epoch_completed, Events.EPOCH_COMPLETED)
        for other in interruptible:
            other.remove_event_handler(run.check_stop, Events.ITERATION_COMPLETED)
    return start
