"""The lock-step block counter against a brute-force sum of ceil((off + G) / bs)."""

import random

from servesim.sim.kvcache import DecodeBlocks, blocks_for


def brute(offs: list[int], g: int, bs: int) -> int:
    return sum(blocks_for(o + g, bs) for o in offs)


def test_blocks_match_brute_force_for_random_groups() -> None:
    rng = random.Random(7)
    for bs in (1, 16, 32):
        group = DecodeBlocks(bs)
        offs: list[int] = []
        for _ in range(300):
            if offs and rng.random() < 0.3:
                group.remove(offs.pop(rng.randrange(len(offs))))
            else:
                off = rng.randint(-500, 3000)
                offs.append(off)
                group.add(off)
            g = rng.randint(600, 2000)
            assert group.blocks_at(g) == brute(offs, g, bs)


def test_steps_that_fit_is_the_exact_largest_k() -> None:
    rng = random.Random(3)
    bs = 16
    for _ in range(200):
        offs = [rng.randint(1, 400) for _ in range(rng.randint(1, 40))]
        group = DecodeBlocks(bs)
        for o in offs:
            group.add(o)
        g = 5
        free = brute(offs, g + 1, bs) + rng.randint(-3, 60)
        limit = rng.randint(1, 300)
        k = group.steps_that_fit(g, free, limit)
        # Every step up to k fits; step k+1 does not (unless k hit the limit).
        assert all(brute(offs, g + j, bs) <= free for j in range(1, k + 1))
        if k < limit:
            assert brute(offs, g + k + 1, bs) > free


def test_blocks_for_rounds_up() -> None:
    assert blocks_for(0, 16) == 0
    assert blocks_for(1, 16) == 1
    assert blocks_for(16, 16) == 1
    assert blocks_for(17, 16) == 2
