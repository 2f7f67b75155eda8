"""Choose how the members of a BMMC CITE ensemble split their cells, without touching the test batch (s1d2).

``bmmc_cite.py`` averages the RNA -> ADT predictions of several models trained with seeds 0, 1, ... Two designs:

- ``shared``: every member trains on the same cells and keeps its best weights on the same validation cells, the
  10 % of the training cells that the first member (seed 0) drew; only the initialisation and the minibatch order
  differ. This is what ``bmmc_cite.py`` has done since 2026-12-07.
- ``own``: each member draws its own 10 % of validation cells with its seed (``model.train``'s default), so the
  members also train on different cells.

Protocol (declared on 2026-12-07, third session, before any run of this script; a diagnostic of ``cite_seeds.py``
had already shown on the s1d2 test cells that five seeds with their own validation cells average to a lower RMSE
than five seeds on one shared split, which is why the question is asked, and why it is answered here on s1d1 cells
only):

- Only the s1d1 cells are read; the s1d2 cells are dropped before anything is computed.
- For each repeat ``r`` of ``--repeats``: 20 % of the s1d1 cells, stratified by cell type (seed ``r``), are held
  out as *outer* cells, never trained on and never used for best-weights selection. Both designs train
  ``--members`` models (seeds 0, 1, ...) on the other 80 %, registered and trained as ``bmmc_cite.py`` trains its
  models (``bmmc_cite.train_unitednet``: gaussian RNA and ADT, the default setting, 200 epochs, batch 128, labels
  registered for ``task="supervised"`` only).
- Score: RNA -> ADT RMSE (ADT ``X`` units) on the outer cells of the mean prediction of the first ``n`` members
  (``unitednet.tl.predict_modality`` with the list of models), for every ``n``; ``n = 1`` is one model.
- Choice per task: the design with the lower mean outer RMSE of the full ensemble over the repeats; ``shared`` is
  kept on a tie. The s1d2 figures of the chosen design come from ``bmmc_cite.py``.

Run from the repository root: ``python benchmarks/cite_ensemble_design.py --task translation`` (about 40 s per
model on one thread: the first member is common to both designs, so 9 models per repeat, 27 for three repeats,
about 20 minutes).
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
from _baselines import make_query
from _common import (
    default_json_path,
    dense,
    fmt_mean_sd,
    print_table,
    quiet,
    rmse,
    set_threads,
    timer,
    use_local_data,
    write_json,
)
from bmmc_cite import LABELS_KEY, SETTINGS, SPLIT_KEY, VALIDATION_SIZE, train_unitednet

NAME = "cite_ensemble_design"
DESIGNS = ("shared", "own")
OUTER_SIZE = 0.2
DESIGN_SPLIT_KEY = "design_split"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=("translation", "supervised"), default="translation")
    parser.add_argument("--repeats", nargs="+", type=int, default=[0, 1, 2], help="seeds of the outer hold-outs")
    parser.add_argument("--members", type=int, default=5, help="members of each ensemble (seeds 0, 1, ...)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None, help="output path (default benchmarks/results/<name>_<task>.json)")
    return parser.parse_args(argv)


def run_repeat(mdata, task: str, repeat: int, n_members: int) -> dict[str, Any]:
    """Both designs on one outer hold-out: outer RMSE of the first n members' mean prediction, for every n."""
    import unitednet as un
    from unitednet.train import stratified_split

    labels = mdata.obs[LABELS_KEY].astype(str).to_numpy()
    inner, outer, _ = stratified_split(mdata.n_obs, 1.0 - OUTER_SIZE, OUTER_SIZE, labels, seed=repeat)
    query = make_query(mdata, outer, ("rna",))
    observed = dense(mdata.mod["adt"].X)[outer]
    private = mdata.copy()
    base = np.full(mdata.n_obs, "test", dtype=object)
    base[inner] = "train"
    private.obs[DESIGN_SPLIT_KEY] = base.astype(str)

    def train(seed: int, split: np.ndarray):
        private.obs[DESIGN_SPLIT_KEY] = split
        with timer() as t:
            model = train_unitednet(task, SETTINGS["default"], private, DESIGN_SPLIT_KEY, VALIDATION_SIZE, seed)
        # the outer cells stay out of training and validation in both designs
        assert set(np.flatnonzero(np.asarray(model.split_) == "test")) == set(outer)
        return model, t.seconds

    first, first_s = train(0, base.astype(str))  # draws its own validation cells; common to both designs
    splits = {"shared": np.asarray(first.split_).astype(str), "own": base.astype(str)}
    result: dict[str, Any] = {"repeat": repeat, "n_outer": len(outer), "n_inner": len(inner)}
    for design in DESIGNS:
        members, seconds = [first], [first_s]
        for seed in range(1, n_members):
            model, s = train(seed, splits[design])
            members.append(model)
            seconds.append(s)
        by_size = []
        for n in range(1, n_members + 1):
            un.tl.predict_modality(members[:n], query, source="rna", target="adt")
            by_size.append(rmse(observed, query.mod["adt"].layers["unitednet_from_rna"]))
        validation_sets = {frozenset(np.flatnonzero(np.asarray(m.split_) == "validation")) for m in members}
        result[design] = {
            "outer_rmse_by_size": by_size,
            "member_train_s": seconds,
            "member_best_epochs": [m.best_epoch_ for m in members],
            "distinct_validation_sets": len(validation_sets),
        }
        print(
            f"repeat {repeat}, {design}: outer RMSE by size {' / '.join(f'{v:.4f}' for v in by_size)} "
            f"({sum(seconds):.0f} s, {len(validation_sets)} distinct validation sets)",
            flush=True,
        )
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the repeats, print the table and the choice, write the JSON."""
    args = parse_args(argv)
    use_local_data()
    set_threads(args.threads)
    import unitednet as un

    quiet()
    full = un.datasets.bmmc_cite()
    s1d1 = full[(full.obs[SPLIT_KEY].astype(str) == "train").to_numpy()].copy()  # s1d2 dropped here
    print(f"{args.task}: {s1d1.n_obs} s1d1 cells, repeats {args.repeats}, {args.members} members per ensemble")
    repeats = [run_repeat(s1d1, args.task, r, args.members) for r in args.repeats]
    rows, means = [], {}
    for design in DESIGNS:
        table = np.array([r[design]["outer_rmse_by_size"] for r in repeats])
        means[design] = float(table[:, -1].mean())
        row = {"design": design}
        for n in range(table.shape[1]):
            row[f"n = {n + 1}"] = fmt_mean_sd(table[:, n].tolist(), digits=4)
        rows.append(row)
    print_table(f"outer RMSE (s1d1 cells held out), task {args.task}, mean ± sd over repeats", rows)
    chosen = "own" if means["own"] < means["shared"] else "shared"
    print(f"chosen design: {chosen} (full ensemble, mean outer RMSE {means[chosen]:.4f})")
    out = args.json or str(default_json_path(f"{NAME}_{args.task}"))
    write_json({"args": vars(args), "repeats": repeats, "mean_outer_rmse": means, "chosen": chosen}, out)
    return {"repeats": repeats, "chosen": chosen}


if __name__ == "__main__":
    main()
