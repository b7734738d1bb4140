import numpy as np
import pytest
import torch

from hvdlm.data.sampler import ShardedSampler, get_batch, num_sequences, split_global_batch


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


@pytest.mark.parametrize("global_batch, size, max_micro, expected", [
    (32, 2, 16, (16, 1)), (32, 1, 16, (16, 2)), (32, 4, 16, (8, 1)), (24, 2, 8, (6, 2)), (12, 1, 5, (4, 3)),
])
def test_global_batch_splits_into_ranks_micro_batches_and_steps(global_batch, size, max_micro, expected):
    micro, accum = split_global_batch(global_batch, size, max_micro)
    assert (micro, accum) == expected and micro * accum * size == global_batch and micro <= max_micro


def test_uneven_global_batch_is_refused():
    with pytest.raises(ValueError, match="cannot be split evenly over 3 ranks"):
        split_global_batch(32, 3, 16)


def steps(sampler, n, accum):
    return [sorted(sum((sampler.next_indices().tolist() for _ in range(accum)), [])) for _ in range(n)]


def test_accumulation_reads_what_one_big_batch_reads_across_epochs():
    big = ShardedSampler(50, 8, rank=0, size=1, seed=1)
    small = ShardedSampler(50, 4, rank=0, size=1, seed=1, grad_accum=2)
    assert steps(big, 14, 1) == steps(small, 14, 2)  # 6 steps an epoch: crosses two boundaries


def test_resume_on_another_rank_count_continues_the_same_order():
    def ranks(size, micro, accum):
        return [ShardedSampler(50, micro, rank=r, size=size, seed=4, grad_accum=accum) for r in range(size)]

    def global_steps(samplers, n, accum):
        out = []
        for _ in range(n):
            out.append(sorted(i for _ in range(accum) for s in samplers for i in s.next_indices().tolist()))
        return out

    two = ranks(2, 4, 1)  # global batch 8 on 2 ranks
    reference = global_steps(ranks(2, 4, 1), 10, 1)
    assert global_steps(two, 4, 1) == reference[:4]
    one = ranks(1, 4, 2)  # the same global batch on 1 rank, 2 micro-steps
    for s in one:
        s.load_state_dict(two[0].state_dict())
    assert global_steps(one, 6, 2) == reference[4:]
