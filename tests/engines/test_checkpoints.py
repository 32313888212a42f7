"""run_checkpointed on a tiny ignite loop (milliseconds per run): resume after an error or a signal equals the
uninterrupted run, unreadable checkpoints are skipped, old checkpoints are pruned across runs, the resume log
names the real epoch and iteration, and fewer / more epochs than before either fail with advice or train on; a
one-off endless iterator with ``replay_from_start`` is replayed from its start and resumes exactly too."""

import logging
import os
import shutil
import signal

import pytest
import torch
from ignite.engine import Engine
from monai import transforms as mt
from monai.data import DataLoader, Dataset

from synthcp3d.engines.checkpoints import (
    FINAL_CHECKPOINT,
    TrainingInterrupted,
    checkpoint_files,
    prune_checkpoints,
    run_checkpointed,
)

EPOCH = 4  # 8 items, batch 2


class Tiny:
    """A small network with BatchNorm and dropout trained on a shuffled MONAI loader with random noise: the run
    draws from torch's global generator (dropout), the loader's generator and a MONAI transform's generator."""

    def __init__(self, fail_at: int | None = None, signal_at: tuple[int, int] | None = None) -> None:
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(),
                                       torch.nn.Dropout(0.3), torch.nn.Linear(8, 1))  # fmt: skip
        self.opt = torch.optim.Adam(self.net.parameters(), lr=1e-2)
        g = torch.Generator().manual_seed(1)
        items = [{"x": torch.randn(3, generator=g), "y": torch.randn(1, generator=g)} for _ in range(2 * EPOCH)]
        noise = mt.Compose([mt.RandGaussianNoised(keys="x", prob=0.5, std=0.1)]).set_random_state(2)
        self.loader = DataLoader(Dataset(items, noise), batch_size=2, shuffle=True,
                                 generator=torch.Generator().manual_seed(3))  # fmt: skip
        self.fail_at, self.signal_at = fail_at, signal_at
        self.engine = Engine(self.step)

    def step(self, engine: Engine, batch: dict) -> float:
        if engine.state.iteration == self.fail_at:
            raise RuntimeError("boom")  # mid-iteration, before the forward pass (it updates BatchNorm statistics)
        self.net.train()
        loss = torch.nn.functional.mse_loss(self.net(batch["x"]), batch["y"])
        if self.signal_at and engine.state.iteration == self.signal_at[0]:
            os.kill(os.getpid(), self.signal_at[1])  # a real signal; the iteration still completes
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return float(loss.detach())

    def run(self, model_dir, **kw) -> int:
        kw.setdefault("every", 1)
        kw.setdefault("desc", "tiny")
        if "max_epochs" not in kw:
            kw.setdefault("max_iterations", 10)
        return run_checkpointed(self.engine, self.loader, {"net": self.net, "opt": self.opt}, model_dir, **kw)


def _equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def _iteration(path) -> int:
    return torch.load(path, weights_only=True)["engine"]["iteration"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Tiny:
    """10 iterations (2.5 epochs) without interruption."""
    ref = Tiny()
    ref.run(tmp_path_factory.mktemp("ref"))
    return ref


def test_resume_after_an_error_equals_the_uninterrupted_run(reference, tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        Tiny(fail_at=7).run(tmp_path)
    # iteration 7 was cut short: the final checkpoint holds iteration 6 (mid-epoch 2), the others are pruned to 2
    assert _iteration(tmp_path / FINAL_CHECKPOINT) == 6
    assert [p.name for p in checkpoint_files(tmp_path)] == ["checkpoint_iteration=5.pt", "checkpoint_iteration=6.pt",
                                                            FINAL_CHECKPOINT]  # fmt: skip
    again = Tiny()
    assert again.run(tmp_path) == 6
    assert again.engine.state.iteration == 10 and _equal(again.net, reference.net)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_after_the_iteration_and_resume_equals_the_uninterrupted_run(reference, tmp_path, sig):
    before = signal.getsignal(sig)
    with pytest.raises(TrainingInterrupted, match=signal.Signals(sig).name):
        Tiny(signal_at=(5, sig)).run(tmp_path)
    assert signal.getsignal(sig) is before  # the previous handler is back
    assert _iteration(tmp_path / FINAL_CHECKPOINT) == 5  # iteration 5 completed, then the run stopped
    again = Tiny()
    assert again.run(tmp_path) == 5
    assert _equal(again.net, reference.net)


def test_unreadable_newest_checkpoint_falls_back_to_the_previous(tmp_path):
    Tiny().run(tmp_path, max_iterations=6, every=2, keep=3)
    (tmp_path / FINAL_CHECKPOINT).write_bytes(b"not a zip archive")
    good = (tmp_path / "checkpoint_iteration=6.pt").read_bytes()
    (tmp_path / "checkpoint_iteration=6.pt").write_bytes(good[: len(good) // 2])  # truncated
    with pytest.warns(RuntimeWarning) as record:
        assert Tiny().run(tmp_path, max_iterations=8) == 4  # from checkpoint_iteration=4.pt
    assert {str(w.message).split(" (")[0] for w in record} == {f"cannot read checkpoint {tmp_path / name}" for name in
                                                              (FINAL_CHECKPOINT, "checkpoint_iteration=6.pt")}
    # nothing readable: a warning and a fresh start
    for p in checkpoint_files(tmp_path):
        p.write_bytes(b"garbage")
    fresh = Tiny()
    with pytest.warns(RuntimeWarning) as record:
        assert fresh.run(tmp_path, max_iterations=2) == 0
    assert "could be read: training tiny from scratch" in str(record[-1].message)
    assert fresh.engine.state.iteration == 2


def test_pruning_keeps_the_newest_across_runs_and_never_the_weights(tmp_path):
    with pytest.raises(RuntimeError):
        Tiny(fail_at=6).run(tmp_path, keep=10)  # an interrupted run that kept everything
    (tmp_path / "model.pt").write_bytes(b"final weights")
    (tmp_path / ".checkpoint_iteration=6.pt.tmp").write_bytes(b"half written")
    assert len(checkpoint_files(tmp_path)) == 6  # iterations 1-5 + final
    Tiny().run(tmp_path, max_iterations=8, keep=2)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["checkpoint_final.pt", "checkpoint_iteration=7.pt", "checkpoint_iteration=8.pt", "model.pt"]
    assert prune_checkpoints(tmp_path, 1) == [tmp_path / "checkpoint_iteration=7.pt"]


def test_resume_logs_the_real_epoch_and_iteration(tmp_path, caplog):
    Tiny().run(tmp_path, max_epochs=2, event="epoch")
    with caplog.at_level(logging.INFO, logger="synthcp3d.engines.checkpoints"):
        Tiny().run(tmp_path, max_epochs=3, event="epoch")
    assert f"resuming tiny from {tmp_path / FINAL_CHECKPOINT}: epoch 2, iteration 8" in caplog.messages
    with pytest.raises(RuntimeError):
        Tiny(fail_at=3).run(tmp_path / "mid", max_epochs=2, event="epoch")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="synthcp3d.engines.checkpoints"):
        Tiny().run(tmp_path / "mid", max_epochs=2, event="epoch")
    assert f"resuming tiny from {tmp_path / 'mid' / FINAL_CHECKPOINT}: epoch 0, iteration 2" in caplog.messages


def test_fewer_epochs_than_the_checkpoint_says_how_to_start_fresh(tmp_path):
    done = Tiny()
    done.run(tmp_path, max_epochs=3, event="epoch")
    with pytest.raises(ValueError, match=r"epoch 3, iteration 12: beyond the requested max_epochs=1.*resume=False"):
        Tiny().run(tmp_path, max_epochs=1, event="epoch")
    same = Tiny()  # as many as done: nothing to train, the finished state is loaded
    assert same.run(tmp_path, max_epochs=3, event="epoch") == 12 and _equal(same.net, done.net)
    fresh = Tiny()
    assert fresh.run(tmp_path, max_epochs=1, event="epoch", resume=False) == 0
    assert fresh.engine.state.iteration == EPOCH and _iteration(tmp_path / FINAL_CHECKPOINT) == EPOCH


def test_more_epochs_than_before_train_the_extra_ones(tmp_path):
    first = Tiny()
    first.run(tmp_path, max_epochs=2, event="epoch")
    trained = {k: v.clone() for k, v in first.net.named_parameters()}
    more = Tiny()
    assert more.run(tmp_path, max_epochs=3, event="epoch") == 2 * EPOCH
    assert more.engine.state.iteration == 3 * EPOCH
    assert all(not torch.equal(trained[k], p) for k, p in more.net.named_parameters())  # weights, not BN buffers
    straight = Tiny()
    straight.run(tmp_path / "straight", max_epochs=3, event="epoch")
    assert _equal(more.net, straight.net)


def test_signal_in_the_last_iteration_completes_the_run_and_still_stops_the_caller(tmp_path):
    tiny = Tiny(signal_at=(8, signal.SIGINT))
    with pytest.raises(TrainingInterrupted, match="SIGINT"):
        tiny.run(tmp_path, max_iterations=8)  # iteration 8 ends epoch 2 and the run
    assert _iteration(tmp_path / FINAL_CHECKPOINT) == 8
    assert Tiny().run(tmp_path, max_iterations=8) == 8  # nothing left to train


class Endless:
    """An endless one-off iterator over a loader (as SPADE's patch stream), showing the loader's generators."""

    def __init__(self, loader) -> None:
        self.generator, self.dataset = loader.generator, loader.dataset
        self.batches = (batch for _ in iter(int, 1) for batch in loader)

    def __iter__(self):
        return self

    def __next__(self):
        return next(self.batches)


def _stream_run(tiny: Tiny, model_dir, replay_from_start: bool = True) -> int:
    # no generator of its own: the loader's shuffling draws from torch's global generator, as dropout does
    loader = DataLoader(tiny.loader.dataset, batch_size=2, shuffle=True)
    return run_checkpointed(tiny.engine, Endless(loader), {"net": tiny.net, "opt": tiny.opt}, model_dir, every=1,
                            max_iterations=10, epoch_length=EPOCH, desc="tiny",
                            replay_from_start=replay_from_start)  # fmt: skip


@pytest.mark.parametrize("stop", ["error", "signal"])
def test_replay_from_start_resumes_a_one_off_stream_exactly(tmp_path, caplog, stop):
    straight = Tiny()
    _stream_run(straight, tmp_path / "straight")
    tiny = Tiny(fail_at=7) if stop == "error" else Tiny(signal_at=(6, signal.SIGINT))
    with pytest.raises(RuntimeError if stop == "error" else TrainingInterrupted):
        _stream_run(tiny, tmp_path / "run")
    ckpt = torch.load(tmp_path / "run" / FINAL_CHECKPOINT, weights_only=True)
    assert ckpt["engine"]["iteration"] == 6 and ckpt["engine"]["rng"]["stream"] is not None
    shutil.copytree(tmp_path / "run", tmp_path / "copy")
    again = Tiny()
    with caplog.at_level(logging.INFO, logger="synthcp3d.engines.checkpoints"):
        assert _stream_run(again, tmp_path / "run") == 6  # replays 6 batches (past an epoch's end), trains 4
    assert "tiny: replaying 6 batches of the data stream (the batches trained on before the checkpoint)" in \
        caplog.messages  # fmt: skip
    assert again.engine.state.iteration == 10 and _equal(again.net, straight.net)
    unreplayed = Tiny()  # the same resume without the replay (a fresh stream) does not reach those weights
    with pytest.warns(RuntimeWarning, match="do not match this data loader"):  # its transforms are the stream's
        assert _stream_run(unreplayed, tmp_path / "copy", replay_from_start=False) == 6
    assert not _equal(unreplayed.net, straight.net)


def test_replay_from_start_needs_an_iterator(tmp_path):
    with pytest.raises(ValueError, match="replay_from_start needs a one-off iterator"):
        Tiny().run(tmp_path, replay_from_start=True)
