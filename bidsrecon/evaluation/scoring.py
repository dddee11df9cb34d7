"""The evaluation stage: every reconstruction and every test set scored (REFERENCE.md §4).

Per item: PixCorr, SSIM, pairwise identification by pixel correlation (chance 0.5) and the
same identification among the items drawn in the item's colour (shapes and letters). Per set:
their means, a permutation p-value of the identification, and two-way identification in the
features of each network of the field's table whose weights are here (the others "not
available", never computed with other weights; Shen et al. 2019; Ozcelik & VanRullen 2023).
"""
import re

import numpy as np
import pandas as pd

from bidsrecon.evaluation.identification import pairwise_identification, shape_identification
from bidsrecon.evaluation.metrics import pixcorr, ssim
from bidsrecon.evaluation.significance import identification_permutation_test


def score_sets(images, truths, items, *, n_permutations=1000, seed=0, device="cpu"):
    """Score the reconstructions of every test set.

    Parameters
    ----------
    images, truths : ndarray, shape (n_items, size, size, 3)
        Reconstructions and stimuli, values in [0, 1], in the order of ``items``.
    items : DataFrame
        ``set``, ``stimulus``, ``n_trials`` of each item.
    n_permutations : int
        Permutations of the identification test.
    seed : int
        Seed of the permutations.
    device : str or torch.device
        Where the evaluation networks run.

    Returns
    -------
    items : DataFrame
        ``items`` with ``pixel_correlation``, ``ssim``, ``identification_pixel`` and
        ``identification_shape`` added.
    sets : DataFrame
        One row per set: counts, the means, ``identification_pixel_p`` and one
        ``identification_<network>`` column per network of the table.
    columns : dict
        BIDS descriptions of the network columns.
    """
    from bidsrecon.evaluation.networks import feature_identification_table

    items = items.copy()
    items["pixel_correlation"] = pixcorr(images, truths)
    items["ssim"] = ssim(images, truths)
    items["identification_pixel"] = np.nan
    items["identification_shape"] = np.nan
    rows, columns = [], {}
    for set_name, group in items.groupby("set", sort=False):
        index = group.index.to_numpy()
        row = {"set": set_name, "n_items": len(group), "n_trials": int(group["n_trials"].sum()),
               "identification_pixel": np.nan, "identification_pixel_p": np.nan,
               "pixel_correlation": group["pixel_correlation"].mean(), "ssim": group["ssim"].mean(),
               "identification_shape": np.nan}
        if len(group) > 1:
            items.loc[index, "identification_pixel"] = pairwise_identification(images[index], truths[index])
            shapes = shape_identification(images[index], truths[index], list(group["stimulus"]))
            items.loc[index, "identification_shape"] = shapes
            row["identification_shape"] = np.nanmean(shapes) if np.isfinite(shapes).any() else np.nan
            row["n_items_dropped"] = int(np.isnan(items.loc[index, "identification_pixel"]).sum())
            row["identification_pixel"], row["identification_pixel_p"] = identification_permutation_test(
                images[index], truths[index], n_permutations=n_permutations, seed=seed)
            for network in feature_identification_table(images[index], truths[index], device=device):
                column = "identification_" + re.sub(r"[^a-z0-9]", "", network["network"].lower())
                row[column] = network["accuracy"] if network["available"] else np.nan
                columns[column] = {"Description": f"Mean two-way identification in {network['network']} "
                                   f"features ({network['layer']}); chance 0.5. {network['note']}".strip()}
        rows.append(row)
    return items, pd.DataFrame(rows), columns
