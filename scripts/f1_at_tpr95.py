"""AUROC and macro-F1 at 95 % TPR (VMDLS's metric) from test_ood run directories' scores/*.npz.

    python scripts/f1_at_tpr95.py results/digits_vmdls_test_ood_s0 results/digits_mnist_conv_test_ood_s0

Until the ``ood`` evaluator reports the F1 itself (openood_ext.evaluators.f1.open_set_f1), this prints
one row per (run, postprocessor, OOD set): AUROC (ID positive) and F1 over the K known classes +
"unknown", with the threshold keeping 95 % of the ID test samples.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from openood_ext.evaluators.f1 import open_set_f1


def rows(run_dir: Path):
    for npz in sorted((run_dir / "scores").glob("*.npz")):
        z = np.load(npz)
        sets = sorted({k.split("__")[0] for k in z.files} - {"id_test", "id_val", "ood_val"})
        conf_id, pred_id, lab_id = z["id_test__conf"], z["id_test__preds"], z["id_test__labels"]
        k = int(lab_id.max()) + 1
        for s in sets:
            conf_ood = z[f"{s}__conf"]
            auroc = roc_auc_score(np.r_[np.ones(len(conf_id)), np.zeros(len(conf_ood))], np.r_[conf_id, conf_ood])
            f1 = open_set_f1(conf_id, pred_id, lab_id, conf_ood, z[f"{s}__preds"], num_classes=k)["f1"]
            yield run_dir.name, npz.stem, s, 100 * auroc, 100 * f1


def main(argv: list[str]) -> None:
    print(f"{'run':40s} {'postprocessor':12s} {'ood set':12s} {'AUROC':>7s} {'F1@95':>7s}")
    for run in argv:
        for r in rows(Path(run)):
            print(f"{r[0]:40s} {r[1]:12s} {r[2]:12s} {r[3]:7.2f} {r[4]:7.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
