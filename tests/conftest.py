import importlib.util
import os

import pytest

# The runtime tests (tests/runtime) also run in an environment without the PyTorch side, so
# torch is only touched where it is installed.
TORCH_INSTALLED = importlib.util.find_spec("torch") is not None

if TORCH_INSTALLED:
    import torch

    # Without a GPU the Triton kernels run on the CPU interpreter; with one, the gpu-marked tests
    # must run them compiled. Triton reads the flag when a kernel is defined, so it is set here,
    # before featx.kernels (and triton) are imported; an explicit TRITON_INTERPRET wins.
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if TORCH_INSTALLED and torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def make_checkpoint(tmp_path):
    """Writes a featx checkpoint of a registered arch with trained-looking BatchNorm stats."""
    from featx.models import get_extractor
    from featx.models.checkpoint import save_checkpoint
    from featx.testing.models import randomize_batchnorm

    def make(arch: str, name: str | None = None, seed: int = 0):
        torch.manual_seed(seed)
        model = randomize_batchnorm(get_extractor(arch).build_model(), seed)
        return save_checkpoint(tmp_path / (name or f"{arch}.pt"), model, arch), model

    return make
