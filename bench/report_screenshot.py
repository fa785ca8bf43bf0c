"""Train on the imbalanced MNIST-5k demo twice and screenshot both run reports for the docs.

    python bench/report_screenshot.py [--work /tmp/imgcls-report] [--epochs 12]

1. `imgcls demo-data WORK/mnist-imb --imbalanced` (digits 3, 5 and 8 keep only 5-10 training images).
2. configs/imbalanced.yaml (focal loss + class-balanced sampler)  -> docs/report-imbalanced.png
3. the same with loss.name=cross_entropy data.sampler=random      -> docs/report-imbalanced-ce.png

Each run writes RUN/report.html; headless Chromium (Debian's /usr/bin/chromium, never a downloaded
browser) takes a full-page screenshot, reduced to a 256-colour PNG to stay small in the repository.
On 2 CPU cores each run takes about a minute.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from imgcls.config import load_config  # noqa: E402
from imgcls.data.demo import write_demo  # noqa: E402
from imgcls.api import train  # noqa: E402
from imgcls.report import all_findings, load_run, write_report  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VARIANTS = (  # (run name, overrides on configs/imbalanced.yaml, screenshot)
    ("focal-balanced", [], "docs/report-imbalanced.png"),
    ("cross-entropy", ["loss.name=cross_entropy", "data.sampler=random"], "docs/report-imbalanced-ce.png"),
)


def screenshot(html: Path, png: Path, width: int = 1280) -> None:
    """Full-page screenshot of ``html`` in headless Chromium, saved as a 256-colour PNG."""
    from PIL import Image
    from playwright.sync_api import sync_playwright

    raw = png.with_suffix(".raw.png")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": width, "height": 900})
        page.goto(html.resolve().as_uri())
        page.screenshot(path=str(raw), full_page=True)
        browser.close()
    # 256 colours: a ~4 MB full-page RGB screenshot becomes ~1 MB, with no visible loss on plots and text.
    Image.open(raw).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(png, optimize=True)
    raw.unlink()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/imgcls-report", help="scratch folder for the data and the runs")
    ap.add_argument("--epochs", type=int, default=None, help="override train.epochs (default: the config's)")
    ap.add_argument("--reuse", action="store_true", help="keep finished runs in WORK; only rewrite reports")
    a = ap.parse_args()
    work = Path(a.work)
    data = work / "mnist-imb"
    if not (data / "train").is_dir():
        write_demo(data, imbalanced=True)
    for name, overrides, png in VARIANTS:
        run_dir = work / "runs" / name
        if not (a.reuse and (run_dir / "val_metrics.json").is_file()):
            shutil.rmtree(run_dir, ignore_errors=True)
            extra = [f"data.root={data / 'train'}", f"data.val_root={data / 'val'}", f"run.dir={run_dir}",
                     "run.report=false", "train.progress=false"]
            if a.epochs:
                extra.append(f"train.epochs={a.epochs}")
            train(load_config(REPO / "configs" / "imbalanced.yaml", overrides + extra))
        report = write_report(run_dir)
        out = REPO / png
        out.parent.mkdir(exist_ok=True)
        screenshot(report, out)
        print(f"\n{name}: {report}\n  screenshot {out} ({out.stat().st_size / 1e6:.2f} MB)")
        for f in all_findings(load_run(run_dir)):
            print(f"  - [{f.kind}] {f.text}")


if __name__ == "__main__":
    main()
