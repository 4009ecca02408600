"""The one training loop's contract: history, logged metrics, objectives that read the step, checkpoints."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from companion import train


def data(n=64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    return x, (x[:, 0] > 0).long()


def test_fit_returns_per_step_losses_and_logs_what_the_loss_reports():
    x, y = data()
    model = nn.Linear(4, 2)

    def loss_fn(m, xb, yb):
        loss = F.cross_entropy(m(xb), yb)
        return {"loss": loss, "double": 2 * loss.detach()}

    h = train.fit(model, x, y, 12, batch_size=8, device="cpu", loss_fn=loss_fn, progress=False)
    assert len(h) == 12 and h.metrics["double"] == [2 * v for v in h]


class CountingObjective(train.Objective):
    def __init__(self):
        self.seen = []

    def __call__(self, model, x, y):
        assert y is None  # self-supervised: no dummy labels
        self.seen.append((self.step, self.total))
        return model(x).pow(2).mean()


def test_objectives_read_the_step_from_fit_and_need_no_labels():
    x, _ = data()
    obj = CountingObjective()
    train.fit(nn.Linear(4, 4), x, None, 5, batch_size=8, device="cpu", loss_fn=obj, progress=False)
    assert obj.seen == [(s, 5) for s in range(5)]


def test_checkpoints_run_in_eval_mode_before_the_update_and_after_training():
    x, y = data()
    model = nn.Sequential(nn.Linear(4, 2), nn.Dropout(0.5))
    seen = {}

    def probe(m, step):
        seen[step] = m.training
        return step * 10

    h = train.fit(model, x, y, 6, batch_size=8, device="cpu", progress=False, checkpoints={"at": [0, 3, 6], "fn": probe})
    assert h.checkpoints == {0: 0, 3: 30, 6: 60} and seen == {0: False, 3: False, 6: False}


def test_same_seed_same_losses():
    x, y = data()
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        runs.append(list(train.fit(nn.Linear(4, 2), x, y, 10, batch_size=8, device="cpu", progress=False)))
    assert runs[0] == runs[1]


def test_progress_prints_one_line_under_papermill(monkeypatch, capsys):
    from companion import runtime

    monkeypatch.setenv(runtime.BATCH_ENV, "1")
    x, y = data()
    train.fit(nn.Linear(4, 2), x, y, 10, batch_size=8, device="cpu", desc="probe")
    out = capsys.readouterr()
    assert out.err == "" and out.out.count("\n") == 1 and out.out.startswith("probe: 10 steps in ")
