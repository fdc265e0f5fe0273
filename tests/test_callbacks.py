"""EMA matches its closed form, swaps in for evaluation and back, and survives checkpointing."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from diff4splat.callbacks.ema import EMA


class _Regression(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(3, 1)
        self.seen_during_val: list[torch.Tensor] = []

    def training_step(self, batch, _):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def validation_step(self, batch, _):
        self.seen_during_val.append(self.net.weight.detach().clone())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class _Recorder(L.Callback):
    def __init__(self) -> None:
        self.weights: list[torch.Tensor] = []

    def on_fit_start(self, trainer, pl_module):
        self.initial = pl_module.net.weight.detach().clone()

    def on_train_batch_end(self, trainer, pl_module, *args):
        self.weights.append(pl_module.net.weight.detach().clone())


def _loader(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 3, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.3
    return DataLoader(TensorDataset(x, y), batch_size=8)


def _trainer(callbacks, steps=16, **kw):
    return L.Trainer(
        max_steps=steps,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        **kw,
    )


def test_ema_matches_closed_form():
    torch.manual_seed(0)
    model, ema, rec = _Regression(), EMA(decay=0.8, power=0.75), _Recorder()
    _trainer([rec, ema]).fit(model, _loader())
    expected = rec.initial.clone()
    for i, w in enumerate(rec.weights):
        d = min(0.8, 1 - (1 + i) ** -0.75)
        expected = d * expected + (1 - d) * w
    torch.testing.assert_close(ema.shadow["net.weight"], expected, rtol=1e-6, atol=1e-6)
    assert ema.num_updates == 16
    assert not torch.allclose(expected, rec.weights[-1])  # the average lags the raw weights


def test_validation_sees_ema_then_raw_weights_return():
    torch.manual_seed(0)
    model, ema = _Regression(), EMA(decay=0.9)
    trainer = _trainer([ema], steps=8, val_check_interval=4, num_sanity_val_steps=0, limit_val_batches=1)
    trainer.fit(model, _loader(), _loader(1))
    assert len(model.seen_during_val) == 2
    torch.testing.assert_close(model.seen_during_val[-1], ema.shadow["net.weight"])
    assert not torch.allclose(model.net.weight, ema.shadow["net.weight"])  # swapped back after validation


def test_ema_state_round_trip():
    torch.manual_seed(0)
    model, ema = _Regression(), EMA(decay=0.9)
    _trainer([ema], steps=5).fit(model, _loader())
    restored = EMA(decay=0.9)
    restored.load_state_dict(ema.state_dict())
    assert restored.num_updates == 5
    torch.testing.assert_close(restored.shadow["net.weight"], ema.shadow["net.weight"])
    state = restored.ema_state_dict(model)
    torch.testing.assert_close(state["net.weight"], ema.shadow["net.weight"])


def test_ema_rejects_bad_decay():
    import pytest

    with pytest.raises(ValueError, match="decay"):
        EMA(decay=1.0)


class _RegressionWithFlops(_Regression):
    def model_flops(self, batch):
        x, _ = batch
        return 3 * 2 * self.net.in_features * self.net.out_features * x.shape[0]  # 3 x forward (multiply-adds x 2)


def test_throughput_windows_count_accumulated_samples_and_log_mfu(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    from diff4splat.callbacks.throughput import Throughput

    torch.manual_seed(0)
    tp = Throughput(window=3, warmup_steps=1, peak_tflops=1e-9)
    logger = CSVLogger(tmp_path, name="csv")
    trainer = L.Trainer(
        max_steps=10,
        callbacks=[tp],
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        accumulate_grad_batches=2,
        log_every_n_steps=50,
    )
    trainer.fit(_RegressionWithFlops(), _loader())
    assert tp.flops_per_sample == 18  # counted on one sample of the first batch
    assert [step for step, _ in tp.history] == [4, 7, 10]  # windows start after the warm-up step
    for _, m in tp.history:
        # 2 micro-batches of 8 samples per optimizer step, whatever the timing
        assert m["perf/samples_per_s"] * m["perf/step_time_s"] == pytest.approx(16, rel=1e-9)
        assert m["perf/model_tflops"] == pytest.approx(18 * m["perf/samples_per_s"] / 1e12, rel=1e-12)
        assert m["perf/mfu"] == pytest.approx(m["perf/model_tflops"] / 1e-9, rel=1e-12)
    logger.save()
    import csv

    rows = [r for r in csv.DictReader(open(f"{logger.log_dir}/metrics.csv")) if r.get("perf/mfu")]
    assert [int(r["step"]) for r in rows] == [4, 7, 10]  # logged at the window's step, not log_every_n_steps'


def test_throughput_rejects_bad_settings_and_tells_batch_sizes():
    from diff4splat.callbacks.throughput import Throughput, batch_size_of, first_sample

    with pytest.raises(ValueError, match="window"):
        Throughput(window=0)
    with pytest.raises(ValueError, match="peak_tflops"):
        Throughput(peak_tflops=0)
    batch = {"key": ["a", "b", "c"], "num_input": 2, "x": torch.zeros(3, 4), "meta": {"y": torch.zeros(5)}}
    assert batch_size_of(batch) == 3
    one = first_sample(batch)
    assert one["key"] == ["a"] and one["x"].shape == (1, 4) and one["num_input"] == 2
    with pytest.raises(ValueError, match="batch size"):
        batch_size_of({"key": "a"})


def test_a_signal_handled_during_the_ranks_agreement_is_not_lost(monkeypatch):
    """torchrun's SIGTERM reaches every rank at once, usually while they wait in the end-of-step all-reduce; the
    handler then runs as the collective returns. That signal must stop the run after the next step, not be
    overwritten by the flags read before the collective (the two-rank sbatch run trained on to max_steps)."""
    import signal
    from types import SimpleNamespace

    from diff4splat.callbacks.preemption import Preemption

    cb = Preemption()
    calls = []

    def all_reduce(flags, op=None):  # the other rank saw nothing yet; the signal lands as the collective returns
        calls.append(flags.tolist())
        if len(calls) == 1:
            cb._on_signal(signal.SIGTERM, None)

    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce)
    trainer = SimpleNamespace(
        world_size=2,
        strategy=SimpleNamespace(root_device=torch.device("cpu")),
        _signal_connector=SimpleNamespace(received_sigterm=False),
    )
    cb.on_train_batch_end(trainer, None)
    assert calls == [[0, 0]] and not trainer._signal_connector.received_sigterm  # not agreed during this step
    cb.on_train_batch_end(trainer, None)
    assert calls[1] == [1, 0] and trainer._signal_connector.received_sigterm  # every rank stops after the next
