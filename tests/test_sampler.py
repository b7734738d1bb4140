import numpy as np
import pytest
import torch

from hvdlm.data.sampler import ShardedSampler, get_batch, num_sequences


def take(sampler, steps):
    return [sampler.next_indices().tolist() for _ in range(steps)]


def test_world_size_does_not_change_what_a_global_batch_holds():
    one = ShardedSampler(50, 8, rank=0, size=1, seed=3)
    two = [ShardedSampler(50, 4, rank=r, size=2, seed=3) for r in range(2)]
    for _ in range(12):  # across an epoch boundary (6 steps per epoch)
        assert one.next_indices().tolist() == two[0].next_indices().tolist() + two[1].next_indices().tolist()


def test_each_epoch_is_a_new_permutation_without_repeats():
    s = ShardedSampler(20, 5, rank=0, size=1, seed=0)
    e0 = sum(take(s, 4), [])
    e1 = sum(take(s, 4), [])
    assert sorted(e0) == sorted(e1) == list(range(20))
    assert e0 != e1 and s.epoch == 1


def test_state_dict_resumes_the_same_stream():
    a = ShardedSampler(37, 3, rank=1, size=2, seed=9)
    take(a, 5)
    b = ShardedSampler(37, 3, rank=1, size=2, seed=9)
    b.load_state_dict(a.state_dict())
    assert take(a, 10) == take(b, 10)


def test_too_little_data_for_one_global_batch():
    with pytest.raises(ValueError, match="cannot fill one global batch"):
        ShardedSampler(7, 4, rank=0, size=2, seed=0)


def test_batches_are_next_token_pairs():
    tokens = np.arange(100, dtype=np.uint16)
    assert num_sequences(100, 8) == 12
    x, y = get_batch(tokens, np.array([0, 11]), 8, torch.device("cpu"))
    assert x.dtype == torch.int64 and x.shape == (2, 8)
    assert x[1].tolist() == list(range(88, 96)) and y[1].tolist() == list(range(89, 97))
