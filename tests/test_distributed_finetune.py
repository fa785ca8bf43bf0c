"""finetune.freeze_epochs under --nproc: the head alone trains while the backbone is frozen, then DDP is
rebuilt over every parameter at the unfreeze epoch; 2 processes x batch 16 end with the weights of one
process x batch 32 (the reference is imgcls's own single-process run, tested elsewhere)."""
from __future__ import annotations

import pytest
import torch

from test_distributed import COMMON, _imgcls, _rows, data  # noqa: F401 (data: the shared image fixture)

from imgcls import load_config, train


@pytest.mark.slow
def test_freeze_epochs_under_nproc_trains_like_one_process(data, tmp_path):
    # SGD (see the multi-label equivalence test): Adam would magnify float-order noise in tiny gradients
    extra = [f"data.root={data}", "finetune.freeze_epochs=1", "train.epochs=2", "optim.name=sgd", "optim.lr=0.05"]
    one, two = tmp_path / "one", tmp_path / "two"
    train(load_config(None, [*COMMON, *extra, "train.batch_size=32", f"run.dir={one}"]), log=lambda *a: None)
    r = _imgcls("train", *COMMON, *extra, "train.batch_size=16", f"run.dir={two}", "--nproc", "2")
    assert r.returncode == 0, r.stderr
    assert "training the head only, backbone frozen" in r.stdout and "epoch 2: backbone unfrozen" in r.stdout
    a, b = (torch.load(run / "last.pt", weights_only=True)["model"] for run in (one, two))
    worst = max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())
    assert worst < 1e-5, worst
    for g, w in zip(_rows(two / "metrics.csv"), _rows(one / "metrics.csv"), strict=True):
        for k in (k for k in w if k.startswith(("val/", "train/"))):
            assert float(g[k]) == pytest.approx(float(w[k]), rel=1e-4, abs=1e-5), k


def test_freeze_epochs_changes_the_backbone_only_after_the_unfreeze(data, tmp_path):
    """In one process: after the frozen epoch the backbone equals its initial weights and the head moved;
    after the unfreeze the backbone moved too (the effect the --nproc test relies on)."""
    from imgcls.engine.build import build_run
    from imgcls.engine.finetune import backbone_parameters, head_module
    from imgcls.engine.fit import fit
    cfg = load_config(None, [f"data.root={data}", *COMMON, "finetune.freeze_epochs=1", "train.epochs=1",
                             "train.batch_size=32", f"run.dir={tmp_path / 'r'}"])
    run = build_run(cfg, log=lambda *a: None)
    body0 = [p.detach().clone() for p in backbone_parameters(run.model)]
    head0 = [p.detach().clone() for p in head_module(run.model).parameters()]
    try:
        fit(run)
    finally:
        run.lock.release()
    assert all(torch.equal(p, q) for p, q in zip(backbone_parameters(run.model), body0))
    assert not all(torch.equal(p, q) for p, q in zip(head_module(run.model).parameters(), head0))
