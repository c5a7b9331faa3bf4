import pytest
import torch

# one thread: predictable test times when the cores are shared (and no oversubscription)
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits():
    from energysplit.training.data import load_digits

    return load_digits()
