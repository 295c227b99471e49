import pytest
import torch

from proxynorm.models import create_model
from proxynorm.train.config import RECIPES, build_config, recipe_values
from proxynorm.train.optim import (
    build_optimizer,
    fused_sgd_available,
    lr_at,
    weight_decay_groups,
)


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipes_load_with_and_without_extra_regularization(recipe):
    plain, extra = build_config(recipe), build_config(recipe, extra_reg=True)
    assert plain.recipe == recipe and extra.extra_reg
    changed = {k for k, v in extra.to_dict().items() if plain.to_dict()[k] != v} - {"extra_reg"}
    assert changed  # extra regularization changes something
    assert changed <= {"label_smoothing", "dropout", "drop_path", "mixup", "cutmix"}


def test_paper_values():
    c = build_config("cifar")
    assert (c.epochs, c.batch_size, c.lr, c.milestones, c.warmup_epochs) == (
        160,
        128,
        0.1,
        [80, 120],
        5,
    )
    assert c.weight_decay_on == "all" and c.norm_batch == 128
    i = build_config("imagenet-resnet")
    assert (i.epochs, i.milestones, i.norm_batch, i.batch_size) == (100, [30, 60, 80, 90], 32, 256)
    e = build_config("efficientnet")
    assert (e.optimizer, e.weight_decay_on, e.decay, e.decay_every) == (
        "rmsprop",
        "conv_and_proxy",
        0.97,
        2.4,
    )
    assert e.ema_decay > 0 and e.epochs == 350


def test_overrides_and_scaling():
    c = build_config("cifar", epochs=16, batch_size=8)
    assert c.milestones == [8, 12] and c.warmup_epochs == pytest.approx(0.5)
    assert c.effective_lr == pytest.approx(0.1 * 8 / 128)
    c = build_config("cifar", lr=0.02, batch_size=16)
    assert c.effective_lr == 0.02
    c = build_config("cifar", epochs=16, milestones=[10], warmup_epochs=1)
    assert c.milestones == [10] and c.warmup_epochs == 1
    with pytest.raises(ValueError, match="unknown training option"):
        build_config("cifar", learning_rate=0.1)
    with pytest.raises(ValueError, match="unknown recipe"):
        build_config("nope")


def test_recipe_from_a_yaml_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("lr: 0.3\nbatch_size: 64\nextra:\n  dropout: 0.5\n")
    assert recipe_values(str(path))["lr"] == 0.3
    c = build_config(str(path), extra_reg=True)
    assert (c.lr, c.batch_size, c.dropout) == (0.3, 64, 0.5)


def test_lr_schedules():
    c = build_config("cifar")
    assert lr_at(c, 0) == 0 and lr_at(c, 2.5) == pytest.approx(0.05)
    assert lr_at(c, 50) == 0.1 and lr_at(c, 80) == pytest.approx(0.01)
    assert lr_at(c, 130) == pytest.approx(0.001)
    e = build_config("efficientnet")
    assert lr_at(e, 5 + 2.4 * 3 + 0.1) == pytest.approx(e.effective_lr * 0.97**3)


def test_weight_decay_groups():
    model = create_model("efficientnet_b0", norm="gn+pn", width_mult=0.25)
    decay, no_decay = weight_decay_groups(model, 1e-5, "conv_and_proxy")
    conv_weights = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Conv2d)}
    proxy = {id(p) for n, p in model.named_parameters() if ".proxy_" in n}
    assert {id(p) for p in decay["params"]} == conv_weights | proxy
    assert proxy
    assert decay["weight_decay"] == 1e-5 and no_decay["weight_decay"] == 0
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    (everything,) = weight_decay_groups(model, 1e-4, "all")
    assert len(everything["params"]) == len(list(model.parameters()))
    opt = build_optimizer(model, build_config("efficientnet"))
    assert isinstance(opt, torch.optim.RMSprop)


def test_global_batch_splits_over_processes_and_sets_the_lr():
    c = build_config("cifar", global_batch=64)
    two = c.for_world(2)
    assert (two.batch_size, two.global_batch) == (32, 64)
    assert two.effective_lr == pytest.approx(0.1 * 64 / 128)
    four = build_config("cifar", batch_size=16).for_world(4)  # per-process batch given
    assert (four.batch_size, four.global_batch) == (16, 64)
    assert four.effective_lr == pytest.approx(0.1 * 64 / 128)
    assert build_config("cifar").for_world(1).global_batch == 128
    recipe = build_config("imagenet-resnet").for_world(8)  # the paper's global batch by default
    assert (recipe.batch_size, recipe.global_batch, recipe.effective_lr) == (32, 256, 0.1)
    with pytest.raises(ValueError, match="global_batch=64 must be a positive multiple of the 3"):
        c.for_world(3)


def _sgd_steps(model, opt, steps=3):
    x, y = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)), torch.arange(4)
    for _ in range(steps):
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    return [p.detach().clone() for p in model.parameters()]


def test_sgd_is_fused_where_torch_has_it_and_updates_as_the_default_one():
    """build_optimizer's SGD: fused where this torch offers it on CPU (>= 2.4), and parameters
    after three Nesterov steps with weight decay equal to the default implementation's."""
    cfg = build_config("cifar", nesterov=True, weight_decay=5e-4)
    torch.manual_seed(0)
    model = create_model("resnet20", norm="gn+pn", num_classes=4, groups=4, width_mult=0.25)
    twin = create_model("resnet20", norm="gn+pn", num_classes=4, groups=4, width_mult=0.25)
    twin.load_state_dict(model.state_dict())
    opt = build_optimizer(model, cfg)
    assert bool(opt.defaults.get("fused")) == fused_sgd_available()
    plain = torch.optim.SGD(weight_decay_groups(twin, 5e-4, "all"), lr=cfg.effective_lr,
                            momentum=cfg.momentum, nesterov=True, foreach=False)  # fmt: skip
    for a, b in zip(_sgd_steps(model, opt), _sgd_steps(twin, plain), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_sgd_falls_back_to_the_default_one_where_fused_is_refused(monkeypatch):
    """A torch whose SGD has no ``fused`` argument (TypeError) or no fused kernel for the
    parameters' device (RuntimeError): the default SGD, with the recipe's settings."""
    for error in (TypeError, RuntimeError):

        class NoFused(torch.optim.SGD):
            refusal = error

            def __init__(self, params, fused=None, **kw):
                if fused:
                    raise self.refusal("no fused SGD here")
                super().__init__(params, **kw)

        monkeypatch.setattr(torch.optim, "SGD", NoFused)
        opt = build_optimizer(torch.nn.Linear(3, 2), build_config("cifar", nesterov=True))
        assert isinstance(opt, NoFused) and not opt.defaults.get("fused")
        assert opt.defaults["nesterov"] and opt.defaults["momentum"] == 0.9


@pytest.mark.parametrize("bad", ["4-0", "a", "0-4,3", "", "1,,2"])
def test_classes_must_name_distinct_labels_or_rising_ranges(bad):
    with pytest.raises(ValueError, match="classes"):
        build_config("cifar", classes=bad)


def test_classes_parse_in_the_order_given():
    assert build_config("cifar", classes="9,0-2").class_list == [9, 0, 1, 2]
    assert build_config("cifar").class_list is None
