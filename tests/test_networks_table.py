"""The two-way identification table in network features: real weights, files, and honesty."""
import numpy as np
import pytest
import torch
import torchvision
from skimage import data as skdata
from skimage.transform import resize

from bidsrecon.evaluation.networks import (
    ALEXNET_FILE,
    INCEPTION_V3_FILE,
    NETWORKS,
    SWAV_FILE,
    efficientnet_identification,
    feature_identification_table,
    swav_state_dict,
)


@pytest.fixture(scope="module")
def photographs():
    """Four of scikit-image's bundled colour photographs, (4, 64, 64, 3) in [0, 1]."""
    names = ("astronaut", "coffee", "chelsea", "rocket")
    return np.stack([resize(getattr(skdata, name)(), (64, 64), anti_aliasing=True)
                     for name in names]).astype(np.float32)


@pytest.fixture(autouse=True)
def empty_hub_cache(tmp_path, monkeypatch):
    """Point torch hub at an empty folder: results must not depend on the machine's cache."""
    hub = tmp_path / "hub"
    hub.mkdir()
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    return hub


def by_network(table):
    return {row["network"]: row for row in table}


def test_table_rows_with_efficientnet_only(photographs, empty_hub_cache):
    rng = np.random.default_rng(0)
    noisy = np.clip(photographs + rng.normal(0, 0.03, photographs.shape), 0, 1)
    table = feature_identification_table(noisy, photographs)
    assert [row["network"] for row in table] == list(NETWORKS)
    assert all(set(row) == {"network", "layer", "available", "accuracy", "note"} for row in table)
    rows = by_network(table)
    efficientnet = rows["EfficientNet-Lite0"]
    assert efficientnet["available"] and efficientnet["accuracy"] == 1.0
    assert "EfficientNet-B1" in efficientnet["note"]
    for name in ("AlexNet(2)", "AlexNet(5)", "InceptionV3", "SwAV"):
        row = rows[name]
        assert not row["available"] and row["accuracy"] is None
        # The note says which file was looked for, and where.
        assert row["note"].startswith("not available")
        assert str(empty_hub_cache / "checkpoints") in row["note"]
    assert ALEXNET_FILE in rows["AlexNet(2)"]["note"]
    assert INCEPTION_V3_FILE in rows["InceptionV3"]["note"]
    assert SWAV_FILE in rows["SwAV"]["note"]
    assert not rows["CLIP"]["available"] and "CLIP" in rows["CLIP"]["note"]


def test_shuffled_reconstructions_score_lower(photographs):
    shuffled = photographs[[1, 2, 3, 0]]
    row = by_network(feature_identification_table(shuffled, photographs))["EfficientNet-Lite0"]
    assert row["available"] and row["accuracy"] < 0.75


def test_efficientnet_items_are_the_rows_parts(photographs):
    # Two reconstructions swapped: they are judged on their own, and the row is the items' mean.
    swapped = photographs[[1, 0, 2, 3]]
    _, scores = efficientnet_identification(swapped, photographs)
    assert scores.shape == (4,)
    assert scores[2] == scores[3] == 1.0 and scores[0] < 1.0 and scores[1] < 1.0
    row = by_network(feature_identification_table(swapped, photographs))["EfficientNet-Lite0"]
    assert row["accuracy"] == scores.mean()


def test_alexnet_file_in_weights_dir_makes_its_rows_available(photographs, tmp_path):
    weights_dir = tmp_path / "weights"
    weights_dir.mkdir()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = torchvision.models.alexnet(weights=None)
    # float16 halves the file (122 MB); the loader casts to float32.
    torch.save({key: value.half() for key, value in model.state_dict().items()},
               weights_dir / ALEXNET_FILE)
    rng = np.random.default_rng(1)
    noisy = np.clip(photographs + rng.normal(0, 0.02, photographs.shape), 0, 1)
    rows = by_network(feature_identification_table(noisy, photographs, weights_dir=weights_dir))
    for name in ("AlexNet(2)", "AlexNet(5)"):
        assert rows[name]["available"], rows[name]["note"]
        assert 0.0 <= rows[name]["accuracy"] <= 1.0
        assert ALEXNET_FILE in rows[name]["note"] and str(weights_dir) not in rows[name]["note"]  # no local path
    assert rows["AlexNet(2)"]["layer"].startswith("features.4")
    assert rows["AlexNet(5)"]["layer"].startswith("features.11")
    # Lightly noised images keep their identity even in random early features.
    assert rows["AlexNet(2)"]["accuracy"] == 1.0
    assert not rows["InceptionV3"]["available"]


def test_wrong_architecture_file_is_reported_not_used(photographs, tmp_path):
    weights_dir = tmp_path / "weights"
    weights_dir.mkdir()
    torch.save({"conv.weight": torch.zeros(2, 3, 1, 1), "fc.bias": torch.zeros(2)},
               weights_dir / INCEPTION_V3_FILE)
    (weights_dir / SWAV_FILE).write_bytes(b"not a checkpoint")
    rows = by_network(feature_identification_table(photographs[:2], photographs[:2],
                                                   weights_dir=weights_dir))
    inception = rows["InceptionV3"]
    assert not inception["available"] and inception["accuracy"] is None
    assert "wrong keys" in inception["note"] and "Conv2d_1a_3x3.conv.weight" in inception["note"]
    assert "conv.weight" in inception["note"]
    swav = rows["SwAV"]
    assert not swav["available"] and "Cannot read" in swav["note"]


def test_swav_checkpoint_keys_are_mapped_to_resnet50():
    with torch.device("meta"):
        backbone = torchvision.models.resnet50(weights=None).state_dict()
    checkpoint = {f"module.{key}": value for key, value in backbone.items()
                  if not key.startswith("fc.")}
    checkpoint["module.projection_head.0.weight"] = torch.zeros(1)
    checkpoint["module.prototypes.weight"] = torch.zeros(1)
    mapped = swav_state_dict(checkpoint)
    assert set(mapped) == {key for key in backbone if not key.startswith("fc.")}


def test_table_checks_its_inputs(photographs):
    with pytest.raises(ValueError, match="at least 2"):
        feature_identification_table(photographs[:1], photographs[:1])
    with pytest.raises(ValueError, match="shape"):
        feature_identification_table(photographs[:2], photographs[:3])


def test_inception_and_swav_files_load(photographs, tmp_path):
    # Seeded random tensors of the right architectures, saved as the published files are
    # (SwAV's with DistributedDataParallel's "module." prefix and its projection head).
    weights_dir = tmp_path / "weights"
    weights_dir.mkdir()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        inception = torchvision.models.inception_v3(weights=None, aux_logits=True,
                                                    init_weights=False)
        resnet = torchvision.models.resnet50(weights=None)
    torch.save({key: value.half() for key, value in inception.state_dict().items()},
               weights_dir / INCEPTION_V3_FILE)
    swav = {f"module.{key}": value.half() for key, value in resnet.state_dict().items()
            if not key.startswith("fc.")}
    swav["module.projection_head.0.weight"] = torch.zeros(8, 2048)
    swav["module.prototypes.weight"] = torch.zeros(3, 8)
    torch.save(swav, weights_dir / SWAV_FILE)
    rows = by_network(feature_identification_table(photographs[:3], photographs[:3],
                                                   weights_dir=weights_dir))
    for name in ("InceptionV3", "SwAV"):
        assert rows[name]["available"], rows[name]["note"]
        assert rows[name]["accuracy"] == 1.0  # identical images identify themselves
