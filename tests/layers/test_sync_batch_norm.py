"""SyncBatchNormStep in one process; its multi-process behaviour is tested with gloo in
tests/train/test_distributed.py."""

import torch

from proxynorm.layers import BatchNormStep, SyncBatchNormStep, convert_sync_batchnorm
from proxynorm.models import create_model


def test_without_a_process_group_it_is_batchnorm_over_the_whole_batch():
    torch.manual_seed(0)
    x = torch.randn(12, 5, 4, 4, dtype=torch.float64)
    ref = BatchNormStep(5, dtype=torch.float64)
    sync = SyncBatchNormStep(5, dtype=torch.float64)
    torch.testing.assert_close(sync(x), ref(x))
    torch.testing.assert_close(sync.running_var, ref.running_var)
    sync.eval(), ref.eval()
    torch.testing.assert_close(sync(x), ref(x))


def test_convert_replaces_bn_steps_and_keeps_their_state():
    model = create_model("resnet20", norm="bn", width_mult=0.25, norm_batch=8)
    model.train()(torch.randn(16, 3, 32, 32))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    steps = sum(isinstance(m, BatchNormStep) for m in model.modules())
    convert_sync_batchnorm(model)
    assert sum(isinstance(m, SyncBatchNormStep) for m in model.modules()) == steps > 0
    assert all(m.norm_batch is None for m in model.modules() if isinstance(m, BatchNormStep))
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert "synchronized" in repr(next(m for m in model.modules() if isinstance(m, BatchNormStep)))


def test_convert_leaves_batch_independent_models_alone():
    model = create_model("resnet20", norm="gn+pn", width_mult=0.25)
    kinds = [type(m) for m in model.modules()]
    assert [type(m) for m in convert_sync_batchnorm(model).modules()] == kinds
