"""Choose the unsupervised UnitedNet settings for Patch-seq without touching any test fold.

Each candidate is trained on the training part of folds 0 and 1 of the 10-fold split of benchmarks/patchseq_cv.py;
the score is the clustering of those same training cells against their labels (ARI, Hungarian accuracy, NMI). The
test folds are never read. Two read-outs of each trained model are scored: its group heads (``predict_labels``) and
k-means with 27 clusters (``n_init=10``, ``random_state=0``) on its fused latent (``latent_kmeans``; added on
2026-12-07, sixth session, before any run of it: the other data sets' scoreboard rows cluster the latent, and k-means
fit on the training fold is Patch-seq's best baseline). The read-out with the higher training-cell ARI is the one
``patchseq_cv.py`` reports as UnitedNet's unsupervised clustering.

Candidates with the translation task (``CANDIDATE_TASKS``; added on 2026-12-07, eighth session, before any run of
them: on osmFISH the latent of a translation model, which has no group heads and no clustering objective, clustered
the regions better outside the test band than the latent of the unsupervised models) have the k-means read-out only.
Rule declared with them: ``--candidates heads5_ddc3_decoder_batch_norm_translation1_variational translation
translation_decoder_batch_norm``; the candidate and read-out with the highest training-cell ARI become
``patchseq_cv.py``'s unsupervised setting and read-out.

Run from the repository root: ``python benchmarks/patchseq_select_unsupervised.py``.
"""

import argparse
import time

import numpy as np
import scvi
from _common import PART_NORMS, default_json_path, set_threads, write_json
from sklearn.cluster import KMeans
from sklearn.model_selection import StratifiedKFold

import unitednet as un

# model keyword arguments and training-plan keyword arguments of each candidate (model defaults otherwise:
# dropout 0.3, heads initialised by k-means at epoch 20)
CANDIDATES: dict[str, tuple[dict, dict]] = {
    "default": ({}, {}),
    "heads5": ({"n_heads": 5}, {}),
    "heads5_no_kmeans_init": ({"n_heads": 5}, {"cluster_init_epoch": None}),
    "heads5_dropout0.1": ({"n_heads": 5, "dropout_rate": 0.1}, {}),
    "heads5_ddc_updates_encoders": ({"n_heads": 5, "clustering_updates_encoders": True}, {}),
    "heads5_latent64": ({"n_heads": 5, "n_latent": 64}, {}),
    "heads10": ({"n_heads": 10}, {}),
    "heads5_ddc1": ({"n_heads": 5, "loss_weights": {"ddc": 1.0}}, {}),
    "heads5_ddc3": ({"n_heads": 5, "loss_weights": {"ddc": 3.0}}, {}),
    "heads5_ddc10": ({"n_heads": 5, "loss_weights": {"ddc": 10.0}}, {}),
    "heads5_ddc1_entropy1": ({"n_heads": 5, "loss_weights": {"ddc": 1.0, "self_entropy": 1.0}}, {}),
    # batch normalisation in the decoders only, or nowhere (the package default normalises every part)
    "heads5_ddc3_decoder_batch_norm": (
        {"n_heads": 5, "loss_weights": {"ddc": 3.0}, "norm": PART_NORMS["decoder_batch_norm"]},
        {},
    ),
    "heads5_ddc3_no_norm": ({"n_heads": 5, "loss_weights": {"ddc": 3.0}, "norm": "none"}, {}),
    # the published translation weight 1 (the package default is 3 since 2026-12-06)
    "heads5_ddc3_decoder_batch_norm_translation1": (
        {"n_heads": 5, "loss_weights": {"ddc": 3.0, "translation": 1.0}, "norm": PART_NORMS["decoder_batch_norm"]},
        {},
    ),
    # the setting above with variational encoders (chosen for the BMMC multiome unsupervised model, 2026-12-07)
    "heads5_ddc3_decoder_batch_norm_translation1_variational": (
        {
            "n_heads": 5,
            "loss_weights": {"ddc": 3.0, "translation": 1.0},
            "norm": PART_NORMS["decoder_batch_norm"],
            "encoder": "variational",
        },
        {},
    ),
    # the translation task (no group heads, no clustering objective), read by k-means on the latent
    "translation": ({}, {}),
    "translation_decoder_batch_norm": ({"norm": PART_NORMS["decoder_batch_norm"]}, {}),
}
# training task of each candidate ("unsupervised" unless named here)
CANDIDATE_TASKS: dict[str, str] = {"translation": "translation", "translation_decoder_batch_norm": "translation"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    parser.add_argument("--max-epochs", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    set_threads(args.threads)
    mdata = un.datasets.patchseq()
    y = mdata.obs["cell_type_TEM"].astype(str).to_numpy()
    folds = list(StratifiedKFold(10, shuffle=True, random_state=0).split(y, y))[:2]
    results = {}
    for name in args.candidates:
        scores = []
        for train, _ in folds:
            train_md = mdata[train].copy()
            scvi.settings.seed = 0
            un.UnitedNetModel.setup_mudata(train_md)
            model_kwargs, plan_kwargs = CANDIDATES[name]
            task = CANDIDATE_TASKS.get(name, "unsupervised")
            model = un.UnitedNetModel(train_md, n_groups=27 if task == "unsupervised" else 0, **model_kwargs)
            start = time.perf_counter()
            model.train(
                task,
                max_epochs=args.max_epochs,
                batch_size=args.batch_size,
                plan_kwargs=plan_kwargs,
                enable_progress_bar=False,
            )
            seconds = time.perf_counter() - start
            heads = {} if task != "unsupervised" else un.tl.clustering_metrics(y[train], model.predict_labels())
            kmeans = KMeans(n_clusters=27, n_init=10, random_state=0).fit_predict(model.get_latent_representation())
            latent = un.tl.clustering_metrics(y[train], kmeans)
            scores.append({**heads, **{f"latent_kmeans_{k}": v for k, v in latent.items()}, "train_seconds": seconds})
        results[name] = {k: float(np.mean([s[k] for s in scores])) for k in scores[0]}
        print(f"{name:30s} " + "  ".join(f"{k} {v:.3f}" for k, v in results[name].items()), flush=True)
    # each candidate's better read-out (k-means only without heads); the best candidate on that
    for r in results.values():
        heads_ari = r.get("ari", -np.inf)
        r["readout"] = "latent_kmeans" if r["latent_kmeans_ari"] > heads_ari else "group heads"
        r["score"] = max(heads_ari, r["latent_kmeans_ari"])
    best = max(results, key=lambda n: results[n]["score"])
    readout = results[best]["readout"]
    print(f"best on training-cell ARI: {best}, read-out {readout} ({results[best]['score']:.3f})")
    write_json(
        {"candidates": results, "best": best, "readout": readout, "settings": vars(args)},
        default_json_path("patchseq_select_unsupervised"),
    )


if __name__ == "__main__":
    main()
