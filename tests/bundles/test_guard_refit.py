"""ccad guard: a bundle's guard refitted on labelled films split as ``ccad train`` split them, the rest kept."""

import csv
import json
import shutil

import numpy as np
import pytest

from ccad.cli import main
from ccad.screening import Screener

EVIDENCE = {
    "chosen": "frontal-chest head (keep 0.99)",
    "candidates": {
        "frontal-chest head (keep 0.99)": {
            "foreign_flagged_all": {"value": 1.0, "k": 9, "n": 9, "ci95": [0.7, 1.0]},
            "foreign_by_kind": {"photo": {"value": 1.0}, "texture": None},
            "chest_flagged_by_cell": {"nih normal": {"value": 0.012}},
        }
    },
}


@pytest.fixture(scope="module")
def refitted(run_and_bundle, synth_folders, tmp_path_factory):
    """The suite's bundle, with a provenance of its own, refitted on the data it was trained on, citing a guard
    report."""
    run, bundle = run_and_bundle
    root = tmp_path_factory.mktemp("guard")
    base = shutil.copytree(bundle, root / "base")
    card = json.loads((base / "ccad-model.json").read_text())
    card["provenance"] = {"what": "a test bundle"}
    (base / "ccad-model.json").write_text(json.dumps(card))
    (root / "evidence.json").write_text(json.dumps(EVIDENCE))
    args = ["guard", "--model", str(base), "--data", str(synth_folders / "manifest.csv"), "--out", str(root / "new")]
    assert main([*args, "--evidence", str(root / "evidence.json")]) == 0
    return run, base, root / "new", args


def test_the_guard_is_fitted_on_the_training_split_and_cut_on_the_validation_split(refitted):
    from ccad.io.files import sha256
    from ccad.models.card import ModelCard
    from ccad.models.ood import load_guard

    run, base, new, _ = refitted
    split = list(csv.DictReader(open(run / "split.csv")))
    old_card, card = ModelCard.load(base), ModelCard.load(new)
    fitted = card.ood["fitted"]
    assert (fitted["films"], fitted["cutoff_films"], fitted["seed"]) == (
        sum(r["split"] == "train" for r in split),
        sum(r["split"] == "val" for r in split),
        0,
    )
    assert fitted["data_sha256"] == old_card.training_data["sha256"] and fitted["same_data_as_the_model"] is True
    assert card.ood["kind"] == "frontal-chest head" and card.ood["cutoff_rule"] == "keeps 99% of the validation split"
    # the drift reference: the validation films' distances and the model's own p(covid), in the split's order
    guard = load_guard(new / "ood.npz")
    val = [r["path"] for r in split if r["split"] == "val"]
    screened = list(Screener.load(base).screen(val))
    np.testing.assert_allclose(guard.reference_scores, [p.raw_probabilities[0] for p in screened], atol=1e-6)
    np.testing.assert_allclose(guard.reference_distances, guard.distance(np.stack([p.pooled for p in screened])))
    assert guard.cutoff == pytest.approx(np.quantile(guard.reference_distances, 0.99), rel=1e-5)
    # everything else is the base bundle's: the network, the heads, the decision
    for name in ("model.onnx", "cam_weights.npy"):
        assert sha256(new / name) == sha256(base / name) == card.sha256[name]
    assert card.sha256["ood.npz"] == sha256(new / "ood.npz") != sha256(base / "ood.npz")
    assert card.decision == old_card.decision and card.classes == old_card.classes


def test_the_card_cites_the_evidence_and_keeps_the_rest(refitted):
    from ccad.models.card import ModelCard

    _, _, new, _ = refitted
    card = ModelCard.load(new)
    assert card.ood["evaluation"] == {
        "by": "benchmarks/guard.py (BENCHMARKS.md, 'The guard'): leave one source out",
        "chosen": "frontal-chest head (keep 0.99)",
        "foreign_flagged": {"value": 1.0, "k": 9, "n": 9, "ci95": [0.7, 1.0]},
        "foreign_flagged_by_kind": {"photo": 1.0},
        "unseen_source_films_flagged": {"nih normal": 0.012},
    }
    assert card.provenance == {"what": "a test bundle"}
    assert card.ood["drift_reference"] == {"images": card.ood["fitted"]["cutoff_films"], "scores": True}


def test_the_new_bundle_screens_and_flags_an_inverted_film(refitted, synth_folders):
    from ccad.models.classifier import imagenet_weights_available

    _, _, new, _ = refitted
    screener = Screener.load(new)
    film = sorted((synth_folders / "covid").glob("*.png"))[0]
    (scored,) = screener.screen([film])
    assert scored.error is None and scored.ood_cutoff == round(screener.ood.cutoff, 3)
    if imagenet_weights_available(224):  # a random backbone's features tell nothing apart
        inverted = screener.score(["inverted"], [screener.prepare(1 - screener.decode(film))])[0]
        assert inverted.in_distribution is False and "not a frontal chest X-ray" in inverted.warning


def test_bad_requests_get_one_line_and_leave_nothing(refitted, tmp_path, capsys):
    _, base, new, args = refitted
    assert main(args) == 2  # the folder exists
    assert capsys.readouterr().err.strip() == f"ccad: error: {new}: already exists (choose another --out or remove it)"
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    out = tmp_path / "out"
    assert main([*args[:-1], str(out), "--evidence", str(bad)]) == 2
    assert capsys.readouterr().err.strip() == f"ccad: error: {bad}: not a benchmarks/guard.py report (KeyError)"
    assert not out.exists() and not list(tmp_path.glob(".out.*"))
