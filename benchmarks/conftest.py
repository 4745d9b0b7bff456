"""pytest-benchmark over the cases of `featx bench` (featx.bench): the same case list, prepared,
parity-checked and run by the same ``Bench``; pytest-benchmark does the timing, saving and
comparing.

    pytest benchmarks/ --benchmark-only --benchmark-storage=benchmarks/results/pytest-benchmark \\
        --benchmark-autosave [--bench-models resnet18,resnet50 --bench-batch-sizes 1,32]

The default test run (testpaths = tests) never collects this folder.
"""

import pytest

from featx.bench.run import Bench
from featx.bench.settings import BenchSettings

DEFAULTS = BenchSettings()


def pytest_addoption(parser):
    group = parser.getgroup("featx bench cases")
    group.addoption("--bench-models", default=",".join(DEFAULTS.models))
    group.addoption("--bench-backends", default=",".join(DEFAULTS.backends))
    group.addoption("--bench-batch-sizes", default=",".join(map(str, DEFAULTS.batch_sizes)))
    group.addoption("--bench-device", default=DEFAULTS.device, choices=("cpu", "cuda"))
    group.addoption("--bench-repeats", type=int, default=DEFAULTS.repeats)
    group.addoption("--bench-e2e-images", type=int, default=DEFAULTS.e2e_images)


def _settings(config) -> BenchSettings:
    return BenchSettings(
        models=tuple(config.getoption("bench_models").split(",")),
        backends=tuple(config.getoption("bench_backends").split(",")),
        batch_sizes=tuple(int(b) for b in config.getoption("bench_batch_sizes").split(",")),
        device=config.getoption("bench_device"),
        repeats=config.getoption("bench_repeats"),
        e2e_images=config.getoption("bench_e2e_images"),
    )


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        settings = _settings(metafunc.config)
        cases = settings.cases()
        metafunc.parametrize("case", cases, ids=[case.id for case in cases])


@pytest.fixture(scope="session")
def bench(request, tmp_path_factory):
    settings = _settings(request.config)
    settings.check()
    return Bench(settings, tmp_path_factory.mktemp("featx-bench"))
