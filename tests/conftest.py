import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

torch.set_num_threads(1)

import pytest  # noqa: E402

from msma_lens import tl as _tl  # noqa: E402
from msma_lens.io.models import available_backends  # noqa: E402

BACKENDS = available_backends()


def pytest_report_header(config):
    return f"transformer-lens {_tl.tl_version()}; backends under test: {BACKENDS}"


@pytest.fixture(scope="session", params=[(n, b) for n in ("tiny-gpt2", "tiny-llama") for b in BACKENDS],
                ids=lambda p: f"{p[0]}-{p[1]}")
def tiny_model(request):
    """Every tiny random model on every backend the installed TransformerLens has."""
    from msma_lens.io.models import load_model

    name, backend = request.param
    return load_model(name, backend=backend, seed=0)


@pytest.fixture(scope="session")
def tiny_gpt2():
    from msma_lens.io.models import load_model

    return load_model("tiny-gpt2", backend=BACKENDS[0], seed=0)


@pytest.fixture(scope="session")
def smollm2():
    from msma_lens.io.models import load_model

    return load_model("smollm2-135m")
