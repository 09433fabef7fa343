"""scripts/train_digits.py: a shortened run learns; one step matches the same network in torch."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")

from im2colbp.gradcheck import directional_derivative_check, numerical_gradient  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_digits.py"


@pytest.fixture(scope="module")
def td():
    spec = importlib.util.spec_from_file_location("train_digits", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_data_split_is_fixed_stratified_80_20(td):
    x_train, y_train, x_test, y_test = td.load_data(0)
    assert x_train.shape == (1437, 1, 8, 8) and x_test.shape == (360, 1, 8, 8)
    assert x_train.dtype == np.float32 and 0 <= x_train.min() and x_train.max() <= 1
    assert np.all(np.bincount(y_test, minlength=10) >= 35)  # every class in the test set
    again = td.load_data(0)
    np.testing.assert_array_equal(again[3], y_test)
    assert not np.array_equal(td.load_data(1)[3], y_test)


def test_softmax_cross_entropy_gradient(td):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((5, 10))
    labels = rng.integers(0, 10, 5)
    loss, grad = td.softmax_cross_entropy(logits, labels)
    assert np.isclose(loss, -np.mean(
        [logits[i, labels[i]] - np.log(np.exp(logits[i]).sum()) for i in range(5)]))
    numeric = numerical_gradient(
        lambda z: np.array([td.softmax_cross_entropy(z, labels)[0]]), logits, np.ones(1))
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)


def test_network_gradients_match_finite_differences(td):
    model = td.DigitsCNN(seed=3, dtype=np.float64, width=4)
    x_train, y_train, _, _ = td.load_data(0, dtype=np.float64)
    x, labels = x_train[:6], y_train[:6]
    model.loss_and_backward(x, labels)
    for name, value, grad in model.parameters():
        def loss_at(v, value=value):
            saved = value.copy()
            value[...] = v
            try:
                return np.array([td.softmax_cross_entropy(model.forward(x), labels)[0]])
            finally:
                value[...] = saved

        numeric, analytic = directional_derivative_check(loss_at, value, grad, np.ones(1),
                                                         rng=1)
        assert np.isclose(numeric, analytic, rtol=1e-5, atol=1e-9), name


def test_short_training_run_lowers_the_loss(td):
    lines = []
    result = td.train(epochs=3, seed=0, train_limit=400, log=lines.append)
    losses = [record["loss"] for record in result["history"]]
    assert losses[0] < math.log(10)  # below chance already during epoch 1
    assert losses[2] < losses[1] < losses[0]
    assert result["test_accuracy"] > 0.8
    assert len(lines) == 2 + 3 + 1 and lines[2].startswith("epoch  1/3")


def test_main_rejects_bad_epochs(td):
    with pytest.raises(SystemExit) as stop:
        td.main(["--epochs", "0"])
    assert stop.value.code == 2


def test_one_training_step_matches_torch(td):
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class TorchDigits(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.conv1 = nn.Conv2d(1, width, 3, padding=1, dtype=torch.float64)
            self.conv2 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1,
                                   dtype=torch.float64)
            self.fc = nn.Linear(2 * width * 16, 10, dtype=torch.float64)

        def forward(self, x):
            h = torch.relu(self.conv1(x))
            h = torch.relu(self.conv2(h))
            return self.fc(h.flatten(1))

    ours = td.DigitsCNN(seed=5, dtype=np.float64, width=8)
    theirs = TorchDigits(8)
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    x_train, y_train, _, _ = td.load_data(0, dtype=np.float64)
    x, labels = x_train[:32], y_train[:32]

    loss, logits = ours.loss_and_backward(x, labels)
    loss_t = nn.functional.cross_entropy(theirs(torch.from_numpy(x)), torch.from_numpy(labels))
    loss_t.backward()
    assert np.isclose(loss, loss_t.item(), rtol=1e-12)
    torch_params = dict(theirs.named_parameters())
    for name, _, grad in ours.parameters():
        np.testing.assert_allclose(grad, torch_params[name].grad.numpy(), rtol=1e-9,
                                   atol=1e-12, err_msg=name)

    # the Adam step too
    optimiser = td.Adam(list(ours.parameters()), lr=3e-3)
    optimiser.step()
    torch.optim.Adam(theirs.parameters(), lr=3e-3).step()
    for name, value, _ in ours.parameters():
        np.testing.assert_allclose(value, torch_params[name].detach().numpy(), rtol=1e-9,
                                   atol=1e-12, err_msg=name)
