"""Block accounting of the paged pool: allocation, freeing, exhaustion, fragmentation, layouts."""
import pytest
import torch

from sizewise.serve.kv_pool import KVLayout, KVPool, PoolExhausted


def small_pool(num_blocks=10, block_size=4):
    return KVPool(KVLayout("gqa", 2, torch.float32, num_kv_heads=2, head_dim=8), num_blocks, block_size)


def test_reserve_and_free_return_every_block():
    pool = small_pool()
    pool.reserve(1, 5)  # 2 blocks
    pool.reserve(2, 4)  # 1 block
    pool.reserve(1, 9)  # grows to 3 blocks
    assert pool.used_blocks == 4 and pool.free_blocks == 6
    assert len(pool.tables[1]) == 3 and len(pool.tables[2]) == 1
    assert set(pool.tables[1]).isdisjoint(pool.tables[2])
    assert pool.free(1) == 3 and pool.free(2) == 1
    assert pool.free(1) == 0  # idempotent
    assert pool.free_blocks == 10 and pool.leaked_blocks() == 0 and pool.tables == {}
    assert pool.peak_used_blocks == 4


def test_exhaustion_changes_nothing():
    pool = small_pool(num_blocks=3)
    pool.reserve(1, 8)
    with pytest.raises(PoolExhausted):
        pool.reserve(2, 8)
    assert 2 not in pool.tables and pool.free_blocks == 1
    assert not pool.can_reserve(2, 5) and pool.can_reserve(2, 4)
    assert not pool.can_reserve(2, 4, reserve_blocks=1)


def test_slots_follow_block_tables():
    pool = small_pool(block_size=4)
    pool.reserve(7, 6)
    t = pool.tables[7]
    assert pool.slots(7, 0, 6) == [t[0] * 4 + i for i in range(4)] + [t[1] * 4, t[1] * 4 + 1]
    st = pool.slot_tensor([7], [6], 8)
    assert st[0, :6].tolist() == pool.slots(7, 0, 6)
    pool.reserve(8, 2)
    bt = pool.block_tensor([7, 8], [6, 2])  # padded to the longest table with block 0
    assert bt.tolist() == [t, [pool.tables[8][0], 0]]
    # a block gather covers exactly the slots the per-token map names
    assert (bt[0, :, None] * 4 + torch.arange(4)).reshape(-1)[:6].tolist() == pool.slots(7, 0, 6)


def test_fragmentation_is_unused_over_allocated_slots():
    pool = small_pool(block_size=4)
    assert pool.fragmentation() == 0.0
    pool.reserve(1, 5)  # 8 slots, 5 used
    pool.reserve(2, 4)  # 4 slots, 4 used
    assert pool.fragmentation() == pytest.approx(3 / 12)
    pool.free(1)
    assert pool.fragmentation() == 0.0


def test_layout_bytes_gqa_and_mla():
    gqa = KVLayout("gqa", 30, torch.float32, num_kv_heads=3, head_dim=64)
    assert gqa.bytes_per_token == 30 * 2 * 3 * 64 * 4
    mla = KVLayout("mla", 61, torch.bfloat16, latent_dim=512 + 64)  # DeepSeek-V3: 576 latent values per token per layer
    assert mla.bytes_per_token == 61 * 576 * 2
    pool = KVPool.from_bytes(gqa, 10 * gqa.bytes_per_token * 16 + 5, block_size=16)
    assert pool.num_blocks == 10 and pool.total_bytes == 10 * 16 * gqa.bytes_per_token
    assert pool.k[0].shape == (3, 160, 64)  # head-major
    mpool = KVPool(mla, 2, 8)
    assert mpool.latent[0].shape == (16, 576) and mpool.k == []
