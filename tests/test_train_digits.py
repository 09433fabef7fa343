"""The digits example (im2colbp.digits, scripts/train_digits.py): a shortened run learns; one
step matches the same network in torch; it runs from the package and from the checkout."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import im2colbp.digits
from im2colbp.gradcheck import directional_derivative_check, numerical_gradient

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "train_digits.py"
needs_sklearn = pytest.mark.skipif(importlib.util.find_spec("sklearn") is None,
                                   reason="scikit-learn is not installed")


@pytest.fixture(scope="module")
def td():
    if importlib.util.find_spec("sklearn") is None:
        pytest.skip("scikit-learn is not installed")
    return im2colbp.digits


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


def test_predict_keeps_no_layer_contexts(td):
    result = td.train(epochs=1, seed=0, train_limit=64, log=None)
    model = result["model"]
    assert model.conv1.pending == () and model.conv2.pending == ()


def test_without_scikit_learn_the_example_says_what_to_install(monkeypatch, capsys):
    for name in ("sklearn", "sklearn.datasets", "sklearn.model_selection"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails
    with pytest.raises(ImportError) as error:
        im2colbp.digits.load_data()
    message = str(error.value)
    assert f"{sys.executable} -m pip install scikit-learn" in message
    assert f"{sys.executable} -m pip install '.[examples]'" in message
    assert "im2colbp[examples]" not in message  # no such package on the index
    assert im2colbp.digits.main(["--epochs", "1"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.strip() == f"error: {message}"


@pytest.mark.parametrize("command", [
    ["-m", "im2colbp.digits", "--help"],  # the installed package
    [str(SCRIPT), "--help"],  # the checkout's script
])
def test_the_example_runs_from_the_package_and_the_checkout(command, tmp_path):
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    result = subprocess.run([sys.executable, *command], capture_output=True, text=True,
                            cwd=tmp_path, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--epochs" in result.stdout and "digits" in result.stdout


def test_the_checkout_script_runs_without_an_installed_package(tmp_path):
    """A fresh clone, before `pip install`: the script uses the package next to it.

    ``python -S`` skips site-packages and its .pth files (so an installed or
    editable im2colbp is invisible); PYTHONPATH points at NumPy's folder only.
    """
    import shutil

    numpy_folder = Path(np.__file__).resolve().parents[1]
    clone = tmp_path / "clone"
    shutil.copytree(ROOT / "im2colbp", clone / "im2colbp",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (clone / "scripts").mkdir()
    shutil.copy(SCRIPT, clone / "scripts" / "train_digits.py")
    env = dict(os.environ, PYTHONPATH=str(numpy_folder))
    probe = subprocess.run([sys.executable, "-S", "-c", "import im2colbp"], env=env,
                           cwd=tmp_path, capture_output=True, text=True, timeout=60)
    if probe.returncode == 0:
        pytest.skip("im2colbp is importable from NumPy's folder: cannot hide it")
    result = subprocess.run([sys.executable, "-S", str(clone / "scripts" / "train_digits.py"),
                             "--help"], env=env, cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--epochs" in result.stdout
