"""Every `featx bench` case as a pytest-benchmark test (see conftest.py)."""

import pytest
import torch

from featx.bench.backends import Unavailable


def test_case(benchmark, bench, case):
    try:
        work = bench.prepare(case)
    except Unavailable as err:
        # The machine lacks what the case needs (a GPU, a CUDA provider): `featx bench` lists
        # it as an unavailable row; pytest lists it as a skip with the same reason (-ra).
        pytest.skip(f"{case.backend} unavailable: {err}")
    parity = bench.parity(case, work)
    if parity is not None and not parity["passed"]:
        pytest.fail(f"{case.id} fails parity with its reference: {'; '.join(parity['failures'])}")
    run = work.run
    if work.cuda_events:
        # pytest-benchmark times with the host clock: wait for the queued GPU work.
        def run():
            work.run()
            torch.cuda.synchronize()

    warmup, repeats = bench.runs(case)
    benchmark.extra_info.update(
        case=case.to_dict(), images_per_run=work.images_per_run, parity=parity, note=work.note
    )
    benchmark.pedantic(run, rounds=repeats, warmup_rounds=warmup, iterations=1)
