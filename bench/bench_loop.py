"""Loop overhead: imgcls's train_epoch vs a plain hand-written loop (vs Lightning's Trainer when
installed), same model, same in-memory batches, same optimizer and steps, alternating in one run.
python bench/bench_loop.py [REPEATS] [DEVICE] -> medians and ratios (also as RESULT, for bench/gpu_fast.py)."""
import statistics
import sys
import time

import torch
from torch import nn

from imgcls.data.prep import BatchPrep
from imgcls.engine.loop import EpochState, StepConfig, train_epoch
from imgcls.models import create_model

torch.manual_seed(0)
repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 5
device = torch.device(sys.argv[2] if len(sys.argv) > 2 else "cpu")
N, B = 2048, 64
images = torch.randint(0, 256, (N, 1, 28, 28), dtype=torch.uint8, device=device)
labels = torch.randint(0, 10, (N,), device=device)
batches = [(images[i:i + B], labels[i:i + B], torch.arange(i, min(i + B, N))) for i in range(0, N, B)]
prep = BatchPrep(device, [0.5], [0.5], channels_last=True)


def sync():
    if device.type == "cuda":
        torch.cuda.synchronize()


def fresh():
    torch.manual_seed(0)
    model = create_model("small_cnn", 10, 1, False, 0.0, image_size=28).to(device, memory_format=torch.channels_last)
    return model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9), nn.CrossEntropyLoss()


class _NoSched:
    def step_update(self, step):
        pass


def run_imgcls():
    model, opt, crit = fresh()
    step = StepConfig(tuple(len(b[0]) for b in batches), 1, "32", None, False, 0)
    sync()
    t = time.perf_counter()
    train_epoch(model, batches, crit, opt, _NoSched(), step, prep, EpochState(),
                torch.amp.GradScaler(device.type, enabled=False))
    sync()
    return time.perf_counter() - t


def run_plain():
    model, opt, crit = fresh()
    sync()
    t = time.perf_counter()
    model.train()
    for x, y, _ in batches:
        x = ((x.float() / 255 - 0.5) / 0.5).contiguous(memory_format=torch.channels_last)
        opt.zero_grad(set_to_none=True)
        loss = crit(model(x), y)
        loss.backward()
        opt.step()
    sync()
    return time.perf_counter() - t


def run_lightning():
    """Lightning's Trainer over the same batches and steps; the epoch is timed inside fit (from
    on_train_epoch_start to on_train_epoch_end), so the Trainer's one-off set-up is not counted."""
    import lightning as L

    class Plain(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model, self.opt, self.crit = fresh()

        def training_step(self, batch, i):
            x, y, _ = batch
            x = ((x.float() / 255 - 0.5) / 0.5).contiguous(memory_format=torch.channels_last)
            return self.crit(self.model(x), y)

        def configure_optimizers(self):
            return self.opt

    class Clock(L.Callback):
        def on_train_epoch_start(self, trainer, module):
            sync()
            self.t = time.perf_counter()

        def on_train_epoch_end(self, trainer, module):
            sync()
            self.seconds = time.perf_counter() - self.t

    clock = Clock()
    trainer = L.Trainer(max_epochs=1, accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[clock], limit_val_batches=0)
    class Batches:  # one iterable (a bare list would be read as several dataloaders)
        def __iter__(self):
            return iter(batches)

        def __len__(self):
            return len(batches)

    trainer.fit(Plain(), train_dataloaders=Batches())
    return clock.seconds


contenders = {"imgcls": run_imgcls, "plain": run_plain}
try:
    import logging
    import warnings

    import lightning  # noqa: F401
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    contenders["lightning"] = run_lightning
except ImportError:
    print("  lightning: not run (not installed; pip install 'imgcls[lightning]')")
times = {k: [] for k in contenders}
for _ in range(repeats):
    for name, fn in contenders.items():
        times[name].append(fn())
med = {k: statistics.median(v) for k, v in times.items()}
RESULT = {**{f"{k}_s": round(v, 4) for k, v in med.items()}, "imgcls_over_plain": round(med["imgcls"] / med["plain"], 3),
          "device": str(device)}
if "lightning" in med:
    RESULT["lightning_over_plain"] = round(med["lightning"] / med["plain"], 3)
print(f"{N} images, batch {B}, small_cnn, SGD, {device}; {repeats} alternating repeats; median epoch seconds:")
for k, v in med.items():
    print(f"  {k:<9} {v:.3f} s")
print(f"  imgcls/plain {med['imgcls'] / med['plain']:.3f}"
      + (f"   lightning/plain {med['lightning'] / med['plain']:.3f}" if "lightning" in med else ""))
