import pytest
import torch

from proxynorm.data.datasets import ArrayDataset
from proxynorm.data.loader import ArrayLoader, ShardedBatchSampler


def dataset(n: int) -> ArrayDataset:
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 8, 8).contiguous()
    return ArrayDataset(images, torch.arange(n) % 10)


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_split_each_global_batch_of_one_process(world):
    one = ShardedBatchSampler(50, 4 * world, True, seed=3)
    ranks = [
        ShardedBatchSampler(50, 4, True, seed=3, rank=r, world_size=world) for r in range(world)
    ]
    for s in [one, *ranks]:
        s.set_epoch(2)
    per_rank = [list(s) for s in ranks]
    assert all(len(batches) == len(one) == 50 // (4 * world) for batches in per_rank)
    for step, batch in enumerate(one):
        assert sum((b[step] for b in per_rank), []) == batch
    one.set_epoch(3)
    assert list(one) != [sum((b[0] for b in per_rank), [])] * len(one)  # reshuffled


def test_evaluation_shards_cover_every_example_once():
    ranks = [ShardedBatchSampler(20, 4, False, rank=r, world_size=3) for r in range(3)]
    seen = sorted(i for s in ranks for batch in s for i in batch)
    assert seen == list(range(20))
    assert [len(s) for s in ranks] == [len(list(s)) for s in ranks] == [2, 2, 1]


def test_sampler_errors():
    with pytest.raises(ValueError, match="rank"):
        ShardedBatchSampler(10, 2, True, rank=2, world_size=2)
    with pytest.raises(ValueError, match="global batch of 12"):
        ShardedBatchSampler(10, 6, True, world_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        ShardedBatchSampler(10, 0, True)


def test_array_loader_ranks_see_the_augmented_one_process_batch():
    data = dataset(40)
    one = ArrayLoader(data, 8, True, seed=1)
    ranks = [ArrayLoader(data, 4, True, seed=1, rank=r, world_size=2) for r in range(2)]
    for loader in [one, *ranks]:
        loader.set_epoch(5)
    batches = [list(loader) for loader in ranks]
    for step, (x, y) in enumerate(one):
        assert torch.equal(torch.cat([b[step][0] for b in batches]), x)
        assert torch.equal(torch.cat([b[step][1] for b in batches]), y)
