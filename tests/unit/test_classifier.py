import math
import re

import pytest
import torch

from models.common.classifier import TrainConfig, learning_rate_at, predict_logits, top1_accuracy, train_classifier
from models.common.reporting import RecordingReporter


def test_learning_rate_warms_up_linearly_then_follows_the_cosine():
    assert learning_rate_at(0, 100, 10, lr=1.0, min_lr=0.0) == pytest.approx(0.1)
    assert learning_rate_at(9, 100, 10, lr=1.0, min_lr=0.0) == pytest.approx(1.0)
    assert learning_rate_at(10, 100, 10, lr=1.0, min_lr=0.0) == pytest.approx(1.0)
    assert learning_rate_at(55, 100, 10, lr=1.0, min_lr=0.0) == pytest.approx(0.5)  # half-way through the decay
    assert learning_rate_at(100, 100, 10, lr=1.0, min_lr=0.1) == pytest.approx(0.1)


def test_top1_accuracy_counts_argmax_hits():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, -1.0], [0.1, 0.2]])
    assert top1_accuracy(logits, torch.tensor([0, 1, 1, 1])) == 75.0


def test_training_learns_a_separable_problem_and_reports_every_step():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 1, 2, 2, generator=g)
    y = (x.flatten(1).sum(1) > 0).long()
    torch.manual_seed(0)  # the init must not depend on which tests ran before
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    before = top1_accuracy(predict_logits(model, x), y)
    reporter = RecordingReporter()
    cfg = TrainConfig(epochs=5, batch_size=32, lr=0.05, warmup_epochs=1, weight_decay=0.0, label_smoothing=0.0)
    metrics = train_classifier(model, x, y, cfg, reporter, g)
    after = top1_accuracy(predict_logits(model, x), y)
    assert after >= 95.0 and after > before
    assert metrics["train_steps"] == 40.0  # 5 epochs x 8 batches
    lrs = reporter.series("train_lr")
    assert len(lrs) == 40 and lrs[7] == pytest.approx(0.05) and lrs[-1] < lrs[8]
    assert reporter.last_progress == (40, 40, "train step")
    assert all(math.isfinite(v) for v in reporter.series("train_loss"))


@pytest.mark.parametrize("kwargs, message", [
    ({"epochs": 0}, "epochs must be > 0, got 0"),
    ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
    ({"label_smoothing": 1.0}, "label_smoothing must be < 1, got 1.0"),
    ({"min_lr": -1e-6}, "min_lr must be >= 0, got -1e-06"),
    ({"max_train_images": 0}, "max_train_images must be >= 1, got 0"),
])
def test_train_config_names_the_bad_field_and_value(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        TrainConfig(**kwargs)
