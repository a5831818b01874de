"""Every number the paper or the authors' scripts fix is the default, written here from the sources rather than read
from the code: Kang et al., TGRS 2020 and github.com/jiankang1991/SNCA_CE (train_SNCA_CE/main.py, MB;
train_SNCA_CE_MC/main.py, MU). docs/method.md sections 2-7 state them."""
import pytest

from lib.cli.args import get_args_parser
from lib.training.schedules import memory_momentum, step_lr

SHARED = {
    "epochs": 130, "batch_size": 256, "lr": 0.1, "dim": 128, "temperature": 0.05, "margin": 0.0, "lambda_": 1.0,
    "momentum": 0.9, "weight_decay": 1e-4, "lr_step": 30, "lr_gamma": 0.5,  # SGD(..., nesterov=True), StepLR(30, 0.5)
    "model": "resnet18", "pretrained": "imagenet", "image_size": 256, "split_seed": 42, "knn_k": 10,
}
PAPER = {"mb": {**SHARED, "memory_momentum": 0.5, "method": "snca-ce"},
         "mu": {**SHARED, "key_momentum": 0.999, "method": "snca-ce"}}


@pytest.mark.parametrize("memory", ["mb", "mu"])
def test_defaults_are_the_papers(memory):
    args = vars(get_args_parser(memory).parse_args([]))
    assert {name: args[name] for name in PAPER[memory]} == PAPER[memory]


def test_schedules_are_the_authors():
    # adjust_memory_update_rate: 0.8 from epoch 80, 0.9 from epoch 120 (0-based); StepLR(step_size=30, gamma=0.5)
    assert [memory_momentum(e) for e in (0, 79, 80, 119, 120, 129)] == [0.5, 0.5, 0.8, 0.8, 0.9, 0.9]
    assert [step_lr(e, 0.1) for e in (0, 29, 30, 59, 60, 90, 129)] == [0.1, 0.1, 0.05, 0.05, 0.025, 0.0125, 0.00625]
