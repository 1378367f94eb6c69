"""Scheduler admission, length buckets, latency target and preemption, driven by a fake runner."""
import torch

from sizewise.serve.kv_pool import KVLayout, KVPool
from sizewise.serve.sampling import SamplingParams
from sizewise.serve.scheduler import Scheduler, SchedulerConfig, Sequence, Status, bucket


def make(num_blocks=10, block_size=4, **cfg):
    pool = KVPool(KVLayout("gqa", 1, torch.float32, num_kv_heads=1, head_dim=1), num_blocks, block_size)
    return pool, Scheduler(pool, SchedulerConfig(**cfg))


def seq(i, n, max_tokens=4):
    return Sequence(i, list(range(1, n + 1)), SamplingParams(max_tokens=max_tokens, temperature=0))


def fake_step(sched):
    """What the engine does with a schedule: every scheduled sequence caches its tokens and gains one."""
    out = sched.schedule()
    for s in out.prefill + out.decode:
        assert sched.pool.can_reserve(s.seq_id, s.num_tokens)  # its slots were reserved before the step
        s.cached = s.num_tokens
        s.output_ids.append(7)
        if len(s.output_ids) >= s.params.max_tokens:
            sched.finish(s, "length")
    return out


def test_admission_stops_at_free_blocks():
    pool, sched = make(num_blocks=10, block_size=4)
    for i in range(5):
        sched.add(seq(i, 10))  # 3 blocks each
    out = sched.schedule()
    assert [s.seq_id for s in out.prefill] == [0, 1, 2]
    assert pool.used_blocks == 9 and len(sched.waiting) == 2
    assert all(s.status is Status.RUNNING for s in out.prefill)


def test_prefill_groups_one_length_bucket():
    pool, sched = make(num_blocks=100)
    for i, n in enumerate([5, 100, 6, 14, 40]):
        sched.add(seq(i, n))
    out = sched.schedule()
    assert [s.seq_id for s in out.prefill] == [0, 2, 3]
    assert {bucket(s.num_tokens) for s in out.prefill} == {16}
    out = sched.schedule()  # next step: the three decode, the 100-token prompt is admitted
    assert [s.seq_id for s in out.decode] == [0, 2, 3] and [s.seq_id for s in out.prefill] == [1]


def test_max_batch_caps_running():
    pool, sched = make(num_blocks=100, max_batch=3)
    for i in range(6):
        sched.add(seq(i, 3))
    fake_step(sched)
    fake_step(sched)
    assert len(sched.running) == 3 and len(sched.waiting) == 3


def test_latency_target_limits_admission_but_never_starves():
    pool, sched = make(num_blocks=100, latency_target_s=0.5)
    for b, t in [(1, 0.2), (2, 0.4), (3, 0.6)]:  # ~0.2 s per sequence: the target allows 2
        sched.record_decode(b, t)
    for i in range(5):
        sched.add(seq(i, 3))
    out = sched.schedule()
    assert len(out.prefill) == 2
    pool2, sched2 = make(num_blocks=100, latency_target_s=0.01)
    sched2.record_decode(1, 5.0)
    sched2.add(seq(0, 3))
    assert len(sched2.schedule().prefill) == 1  # an idle engine always takes one request


def test_preempts_newest_and_recomputes_without_leaks():
    pool, sched = make(num_blocks=4, block_size=4)
    a, b = seq(0, 4, max_tokens=8), seq(1, 4, max_tokens=8)
    sched.add(a)
    sched.add(b)
    out = fake_step(sched)  # both prefilled: 2 blocks, each 4 slots full + 1 output token pending
    assert len(out.prefill) == 2 and pool.used_blocks == 2
    out = fake_step(sched)  # both grow into a second block: 4 blocks
    assert pool.used_blocks == 4 and not out.preempted
    for _ in range(6):  # at 9 tokens each needs a third block: none left
        out = fake_step(sched)
        if out.preempted:
            break
    assert out.preempted == [b]  # the newest gives way
    assert b.status is Status.WAITING and b.cached == 0 and sched.waiting[0] is b
    assert b.preemptions == 1 and len(b.output_ids) > 0  # its tokens are kept for recompute
    for _ in range(30):
        if not sched.running and not sched.waiting:
            break
        fake_step(sched)
    assert a.status is Status.FINISHED and b.status is Status.FINISHED
    assert len(a.output_ids) == 8 and len(b.output_ids) == 8
    assert pool.free_blocks == 4 and pool.leaked_blocks() == 0


def test_finish_from_waiting_or_running_frees_blocks():
    pool, sched = make(num_blocks=10)
    s1, s2 = seq(0, 5), seq(1, 5)
    sched.add(s1)
    sched.schedule()
    sched.add(s2)
    sched.finish(s1, "cancelled")
    sched.finish(s2, "cancelled")
    assert pool.free_blocks == 10 and not sched.running and not sched.waiting
    assert s1.finish_reason == "cancelled"
