"""One 18-class head vs three heads with the combine rule on a generated course-shaped data set
(60 people x 7 photos, labels in the path; mask, gender and age each visible in the 16 px photos),
same epochs and seed; then a 3-fold cv of the three heads. Prints combined macro F1
(python bench/course_heads.py [WORKDIR] [EPOCHS]); the age step is small (8 grey levels), so age is the hard head."""
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import imgcls  # noqa: E402
from imgcls.config import load_config  # noqa: E402
from test_course import make_course  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
work = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp())
data = work / "train" / "images"
if not data.exists():
    make_course(data, people=60, age_signal=8)
common = [f"data.root={data}", "data.image_size=16", "model.name=small_cnn", "data.num_workers=0", f"train.epochs={sys.argv[2] if len(sys.argv) > 2 else 20}",
          "train.batch_size=32", "train.progress=false", "run.report=false", "data.augment=light", "optim.lr=0.01"]
one = imgcls.train(load_config(REPO / "configs/course-18.yaml", common + [f"run.dir={work / 'one-head'}"]),
                   log=lambda *a: None)
three = imgcls.train(load_config(REPO / "configs/course.yaml", common + [f"run.dir={work / 'three-heads'}"]),
                     log=lambda *a: None)
print(f"one 18-class head: val/f1_macro {one.best_metrics['val/f1_macro']:.4f} (epoch {one.best_epoch})")
print(f"three heads + combine: val/combined/f1_macro {three.best_metrics['val/combined/f1_macro']:.4f} "
      f"(epoch {three.best_epoch})")
cv = imgcls.cross_validate(load_config(REPO / "configs/course.yaml", common + [f"run.dir={work / 'cv'}"]), folds=3,
                           log=lambda *a: None)
s = cv.summary
k = "val/combined/f1_macro"
print(f"cv 3 folds, three heads: {k} {s['mean'][k]:.4f} ± {s['std'][k]:.4f}; out-of-fold {s['oof'][k]:.4f}")
