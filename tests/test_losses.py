"""Losses against oracles: torch's cross-entropy, scikit-learn's macro F1, hand-computed weights."""
from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score

from conftest import assert_facts
from imgcls.errors import UserError
from imgcls.losses import (
    F1_EPS,
    class_weights_from_counts,
    create_loss,
    list_losses,
    soft_f1_per_class,
)

K = 5


def _batch(seed: int, n: int = 16, k: int = K) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(n, k, generator=g, dtype=torch.float64)
    target = torch.randint(0, k, (n,), generator=g)
    return logits, target


def _weights(k: int = K) -> torch.Tensor:
    return torch.linspace(0.3, 2.5, k)


def _soft_target(seed: int, n: int = 16, k: int = K) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(2 * torch.randn(n, k, generator=g, dtype=torch.float64), dim=1)


def test_registry_lists_the_four_losses():
    assert list_losses("class") == sorted(["cross_entropy", "focal", "label_smoothing", "f1"])
    assert list_losses() == sorted(["cross_entropy", "focal", "label_smoothing", "f1", "bce", "binary_focal",
                                    "mse", "l1", "huber"])


def test_unknown_name_suggests_the_closest():
    with pytest.raises(UserError, match="did you mean 'focal'"):
        create_loss("focl", K)


# ---------------------------------------------------------------- cross-entropy and label smoothing


@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy_matches_torch(weighted):
    logits, target = _batch(0)
    w = _weights() if weighted else None
    ours = create_loss("cross_entropy", K, class_weights=w)(logits, target)
    ref = F.cross_entropy(logits, target, weight=None if w is None else w.double())
    torch.testing.assert_close(ours, ref)


def test_cross_entropy_soft_targets_match_torch_unweighted():
    logits, _ = _batch(1)
    q = _soft_target(1)
    torch.testing.assert_close(create_loss("cross_entropy", K)(logits, q), F.cross_entropy(logits, q))


@pytest.mark.parametrize("name", ["cross_entropy", "label_smoothing"])
def test_weighted_soft_targets_are_normalised_by_target_weight(name):
    # Documented convention: sum_i l_i / sum_i (q_i . w), not torch's division by N.
    logits, _ = _batch(2)
    q, w = _soft_target(2), _weights().double()
    eps = 0.2 if name == "label_smoothing" else 0.0
    params = {"smoothing": eps} if name == "label_smoothing" else {}
    ours = create_loss(name, K, class_weights=w, **params)(logits, q)
    torch_sum = F.cross_entropy(logits, q, weight=w, label_smoothing=eps, reduction="sum")
    torch.testing.assert_close(ours, torch_sum / (q @ w).sum())


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("eps", [0.0, 0.1, 0.35])
def test_label_smoothing_matches_torch(weighted, eps):
    logits, target = _batch(3)
    w = _weights().double() if weighted else None
    ours = create_loss("label_smoothing", K, class_weights=w, smoothing=eps)(logits, target)
    torch.testing.assert_close(ours, F.cross_entropy(logits, target, weight=w, label_smoothing=eps))


def test_label_smoothing_spreads_eps_over_all_classes():
    # torch's convention, written out: target = (1 - eps) * onehot + eps / K.
    logits, target = _batch(4)
    eps = 0.3
    smoothed = (1 - eps) * F.one_hot(target, K).double() + eps / K
    expected = -(smoothed * torch.log_softmax(logits, 1)).sum(1).mean()
    torch.testing.assert_close(create_loss("label_smoothing", K, smoothing=eps)(logits, target), expected)


# ---------------------------------------------------------------- focal


@pytest.mark.parametrize("weighted", [False, True])
def test_focal_with_gamma_zero_is_cross_entropy(weighted):
    logits, target = _batch(5)
    w = _weights().double() if weighted else None
    focal = create_loss("focal", K, class_weights=w, gamma=0.0, alpha=None)
    torch.testing.assert_close(focal(logits, target), F.cross_entropy(logits, target, weight=w))


@pytest.mark.parametrize("weighted", [False, True])
def test_focal_matches_the_paper_formula(weighted):
    logits, target = _batch(6)
    gamma, alpha = 2.0, 0.25
    w = _weights().double() if weighted else torch.ones(K, dtype=torch.float64)
    p_t = torch.softmax(logits, 1)[torch.arange(len(target)), target]
    per_sample = -alpha * w[target] * (1 - p_t) ** gamma * torch.log(p_t)
    expected = per_sample.sum() / w[target].sum()
    focal = create_loss("focal", K, class_weights=w if weighted else None, gamma=gamma, alpha=alpha)
    torch.testing.assert_close(focal(logits, target), expected)


def test_focal_soft_targets_follow_the_documented_sum():
    logits, _ = _batch(7)
    q, gamma = _soft_target(7), 1.5
    p = torch.softmax(logits, 1)
    expected = (q * (1 - p) ** gamma * -torch.log(p)).sum(1).mean()
    torch.testing.assert_close(create_loss("focal", K, gamma=gamma)(logits, q), expected)


def test_focal_gradient_stays_finite_when_p_saturates():
    # p_t rounds to exactly 1 in float32; gamma < 1 would give inf * 0 without the clamp.
    logits = torch.tensor([[200.0, 0.0, 0.0], [0.0, 1.0, 2.0]], requires_grad=True)
    loss = create_loss("focal", 3, gamma=0.5)(logits, torch.tensor([0, 2]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


# ---------------------------------------------------------------- soft F1


def _f1_cases():
    """(y_true, y_pred) pairs over K classes, including classes absent from truth and/or predictions."""
    g = torch.Generator().manual_seed(11)
    cases = []
    for _ in range(6):
        y_true = torch.randint(0, K, (20,), generator=g)
        y_pred = torch.randint(0, K, (20,), generator=g)
        cases.append((y_true, y_pred))
    y_true = torch.randint(0, K - 1, (20,), generator=g)  # class K-1 absent from the truth ...
    cases.append((y_true, y_true.clone()))  # ... and from the predictions (F1 = 0 by convention)
    y_pred = y_true.clone()
    y_pred[:3] = K - 1  # ... absent from the truth but predicted (false positives)
    cases.append((y_true, y_pred))
    cases.append((torch.zeros(8, dtype=torch.long), torch.ones(8, dtype=torch.long)))  # 3 classes in neither
    return cases


@pytest.mark.parametrize("case", range(len(_f1_cases())))
def test_soft_f1_on_one_hot_probabilities_matches_sklearn(case):
    y_true, y_pred = _f1_cases()[case]
    ref = f1_score(y_true.numpy(), y_pred.numpy(), average="macro", labels=list(range(K)), zero_division=0)
    probs = F.one_hot(y_pred, K).double()
    per_class = soft_f1_per_class(probs, F.one_hot(y_true, K).double())
    assert abs(per_class.mean().item() - ref) < 10 * F1_EPS
    # Through the module, with logits so large that softmax is exactly one-hot in float32.
    loss = create_loss("f1", K)(1e4 * F.one_hot(y_pred, K).float(), y_true)
    assert abs(loss.item() - (1 - ref)) < 1e-6


def test_soft_f1_weights_average_over_classes():
    logits, target = _batch(12)
    w = _weights().double()
    f1 = soft_f1_per_class(torch.softmax(logits, 1), F.one_hot(target, K).double())
    loss = create_loss("f1", K, class_weights=w)(logits, target)
    torch.testing.assert_close(loss, 1 - (w * f1).sum() / w.sum())


# ---------------------------------------------------------------- every registered loss


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("name", list_losses("class"))
def test_one_hot_soft_target_equals_index_target(name, weighted):
    logits, target = _batch(8)
    loss = create_loss(name, K, class_weights=_weights() if weighted else None)
    torch.testing.assert_close(loss(logits, F.one_hot(target, K).double()), loss(logits, target))


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("name", list_losses("class"))
def test_gradients_are_finite_and_non_zero(name, soft):
    logits, target = _batch(9)
    logits = logits.float().requires_grad_()
    tgt = _soft_target(9).float() if soft else target
    loss = create_loss(name, K, class_weights=_weights())(logits, tgt)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0


@pytest.mark.parametrize("name", list_losses("class"))
def test_half_precision_logits_give_a_float32_loss(name):
    logits, target = _batch(10)
    loss = create_loss(name, K)(logits.to(torch.bfloat16), target)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, create_loss(name, K)(logits.to(torch.bfloat16).float(), target))


@pytest.mark.parametrize("name", list_losses("class"))
def test_class_weights_follow_the_module_to_another_dtype(name):
    loss = create_loss(name, K, class_weights=_weights()).to(torch.float64)
    assert loss.class_weights.dtype == torch.float64


def test_wrong_target_shape_is_a_bug_not_a_silent_broadcast():
    logits, target = _batch(13)
    with pytest.raises(ValueError, match="target"):
        create_loss("cross_entropy", K)(logits, target[:-1])
    with pytest.raises(ValueError, match="logits"):
        create_loss("focal", K + 1)(logits, target)


# ---------------------------------------------------------------- factory validation and class weights


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "focal", "gamma": -1.0}, "loss.gamma"),
        ({"name": "focal", "gamma": float("inf")}, "loss.gamma"),
        ({"name": "focal", "alpha": 0.0}, "loss.alpha"),
        ({"name": "focal", "alpha": -0.5}, "loss.alpha"),
        ({"name": "label_smoothing", "smoothing": 1.0}, "loss.smoothing"),
        ({"name": "label_smoothing", "smoothing": -0.1}, "loss.smoothing"),
        ({"name": "cross_entropy", "class_weights": torch.ones(K + 1)}, "one weight per class"),
        ({"name": "cross_entropy", "class_weights": torch.tensor([1.0, -1.0, 1.0, 1.0, 1.0])}, "non-negative"),
    ],
)
def test_bad_factory_arguments_are_user_errors(kwargs, message):
    with pytest.raises(UserError, match=re.escape(message)):
        create_loss(num_classes=K, **kwargs)


@pytest.mark.parametrize("name, kwargs, bad, takes", [
    ("cross_entropy", {"gamma": -1.0, "smoothing": 5.0}, "gamma", "no parameters (besides class_weights)"),
    ("cross_entropy", {"smoothing": 0.1}, "smoothing", "no parameters"),
    ("f1", {"alpha": 0.25}, "alpha", "no parameters"),
    ("focal", {"smoothing": 0.1}, "smoothing", "gamma and alpha"),
    ("label_smoothing", {"gamma": 2.0}, "gamma", "smoothing"),
])
def test_a_parameter_the_loss_does_not_take_is_refused(name, kwargs, bad, takes):
    # Before the registries declared their parameters, cross_entropy silently ignored gamma=-1, smoothing=5.
    with pytest.raises(UserError) as e:
        create_loss(name, K, **kwargs)
    msg = str(e.value)
    assert_facts(msg, f"loss '{name}' does not take '{bad}' (loss.{bad})")
    assert takes in msg, msg
    assert msg.endswith(".") and "\n" not in msg


def test_every_loss_declares_params_with_the_config_defaults():
    from imgcls.config import LossConfig
    from imgcls.losses import LOSS_PARAMS, loss_info
    for name in list_losses("class"):
        info = loss_info(name)
        assert info.name == name and info.description
        for p in info.params:
            assert LOSS_PARAMS[p].default == getattr(LossConfig(), p), (name, p)
    assert loss_info("focal").params == ("gamma", "alpha")
    assert loss_info("label_smoothing").params == ("smoothing",)
    assert loss_info("cross_entropy").params == () and loss_info("f1").params == ()
    with pytest.raises(UserError, match="did you mean 'focal'"):
        loss_info("focla")


@pytest.mark.parametrize("name", list_losses("class"))
def test_every_loss_runs_forward_and_backward_on_random_data(name):
    from imgcls.losses import LOSS_PARAMS, loss_info
    params = {p: LOSS_PARAMS[p].default for p in loss_info(name).params}  # every parameter, spelled out
    loss_fn = create_loss(name, K, class_weights=_weights(), **params)
    logits = torch.randn(12, K, requires_grad=True)
    for target in (torch.randint(0, K, (12,)), torch.softmax(torch.randn(12, K), 1)):
        loss = loss_fn(logits, target)
        assert loss.ndim == 0 and torch.isfinite(loss)
        (grad,) = torch.autograd.grad(loss, logits)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_balanced_weights_hand_computed():
    # inverse counts 1/10, 1/30, 1/60 have mean 1/20, so the weights are 2, 2/3, 1/3.
    w = class_weights_from_counts([10, 30, 60], "balanced")
    torch.testing.assert_close(w, torch.tensor([2.0, 2 / 3, 1 / 3]))
    # An empty class gets 0 and does not change the mean-1 scaling of the others: 1/10, 1/30 -> 1.5, 0.5.
    w = class_weights_from_counts([10, 0, 30], "balanced")
    torch.testing.assert_close(w, torch.tensor([1.5, 0.0, 0.5]))


def test_balanced_weights_equalise_class_totals():
    counts = [3, 7, 50, 1]
    w = class_weights_from_counts(counts, "balanced")
    totals = w * torch.tensor(counts, dtype=torch.float32)
    torch.testing.assert_close(totals, totals[0].expand(4))


def test_explicit_and_absent_class_weights():
    explicit = class_weights_from_counts([5, 5, 5], [1, 2.5, 0.5])
    torch.testing.assert_close(explicit, torch.tensor([1.0, 2.5, 0.5]))
    assert class_weights_from_counts([5, 5], "none") is None
    assert class_weights_from_counts([5, 5], None) is None


@pytest.mark.parametrize(
    ("counts", "mode"),
    [([5, 5, 5], [1.0, 2.0]), ([5, 5], [1.0, 0.0]), ([5, 5], [1.0, "x"]), ([0, 0], "balanced")],
)
def test_bad_class_weights_are_user_errors(counts, mode):
    with pytest.raises(UserError):
        class_weights_from_counts(counts, mode)


def test_unknown_weight_mode_suggests_balanced():
    with pytest.raises(UserError, match="did you mean 'balanced'"):
        class_weights_from_counts([1, 2], "balanced_")
