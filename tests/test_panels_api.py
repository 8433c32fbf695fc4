"""Server sides of the page's panels: revert as an undoable step, a patch that is already applied,
the models the Open box offers (the demo folder allowed by default), and whether a model is a
causal LM. Byte states are checked against the numpy/ml_dtypes oracle of test_edits.py."""

from __future__ import annotations

import json
import shutil

import numpy as np
from .conftest import assert_error, make_settings, write_tiny_llama
from .test_edits import DOWN, bits, chain, edit, open_model, read_base, staged_array, three_edits  # noqa: F401


def history(client) -> dict:
    r = client.get("/api/edits/history")
    assert r.status_code == 200, r.text
    return r.json()


def staged_ids(client) -> list[int]:
    return [e["id"] for e in client.get("/api/edits").json()["edits"]]


# -- revert is a step that undo takes back ----------------------------------------------------------


def test_undo_after_revert_brings_the_edit_back_not_the_top_one(client, three_edits):
    base, (b1, b2, b3), (i1, i2, i3) = three_edits
    assert history(client) == {"undo": {"action": "stage", "edit_id": i3, "description": history(client)["undo"]["description"]},
                               "redo": None}
    r = client.post(f"/api/edits/{i2}/revert")
    assert r.status_code == 200 and r.json()["reverted"]["status"] == "reverted"
    assert staged_ids(client) == [i1, i3]
    assert np.array_equal(bits(staged_array(client, DOWN, base)), bits(chain(base, b1, b3)))
    assert history(client)["undo"]["action"] == "revert" and history(client)["undo"]["edit_id"] == i2

    # undo takes back the revert: #2 is staged again, in its place; #3 is untouched
    r = client.post("/api/edits/undo")
    assert r.status_code == 200 and r.json()["undone"]["id"] == i2 and r.json()["undone"]["status"] == "staged"
    assert staged_ids(client) == [i1, i2, i3]
    assert np.array_equal(bits(staged_array(client, DOWN, base)), bits(chain(base, b1, b2, b3)))
    assert history(client)["redo"]["action"] == "revert" and history(client)["redo"]["edit_id"] == i2

    # redo reverts it again; a second undo/undo pair walks back further, in order
    r = client.post("/api/edits/redo")
    assert r.status_code == 200 and r.json()["redone"]["id"] == i2 and r.json()["redone"]["status"] == "reverted"
    assert staged_ids(client) == [i1, i3]
    assert client.post("/api/edits/undo").json()["undone"]["id"] == i2  # the revert again
    assert client.post("/api/edits/undo").json()["undone"]["id"] == i3  # then the newest edit
    assert staged_ids(client) == [i1, i2]
    assert np.array_equal(bits(staged_array(client, DOWN, base)), bits(chain(base, b1, b2)))
    assert client.post("/api/edits/redo").json()["redone"]["id"] == i3
    assert np.array_equal(bits(staged_array(client, DOWN, base)), bits(chain(base, b1, b2, b3)))


def test_revert_undo_of_every_edit_returns_to_the_start(client, three_edits):
    base, (b1, b2, b3), (i1, i2, i3) = three_edits
    for i in (i3, i2, i1):
        assert client.post(f"/api/edits/{i}/revert").status_code == 200
    assert staged_array(client, DOWN, base).tobytes() == base.tobytes()
    assert_error(client.post(f"/api/edits/{i1}/revert"), 404, "edit_not_found", "reverted")
    for want in (i1, i2, i3):  # the reverts come back in reverse order
        assert client.post("/api/edits/undo").json()["undone"]["id"] == want
    assert staged_ids(client) == [i1, i2, i3]
    assert np.array_equal(bits(staged_array(client, DOWN, base)), bits(chain(base, b1, b2, b3)))


def test_a_new_edit_after_undoing_a_revert_drops_the_redo(client, three_edits):
    base, (b1, b2, b3), (i1, i2, i3) = three_edits
    client.post(f"/api/edits/{i2}/revert")
    client.post("/api/edits/undo")
    b4 = {"tensor_name": DOWN, "op": "zero", "cells": [{"index": [15, 31]}]}
    i4 = edit(client, b4)["edit"]["id"]
    assert history(client)["redo"] is None
    assert_error(client.post("/api/edits/redo"), 409, "nothing_to_do")
    assert staged_ids(client) == [i1, i2, i3, i4]
    assert np.array_equal(bits(staged_array(client, DOWN, base)), bits(chain(base, b1, b2, b3, b4)))


def test_discard_all_forgets_reverted_edits_and_history(client, three_edits):
    _, _, (i1, i2, i3) = three_edits
    client.post(f"/api/edits/{i2}/revert")
    assert client.delete("/api/edits").json() == {"cleared": 2}
    assert history(client) == {"undo": None, "redo": None}
    assert_error(client.post("/api/edits/undo"), 409, "nothing_to_do")


def test_edits_staged_before_the_history_existed_still_undo(client, three_edits):
    """A journal from before the history table: its edits have no steps; undo pops them top first."""
    _, _, (i1, i2, i3) = three_edits
    journal = client.app.state.staging.journal
    from sqlalchemy import delete

    from tensor_surgery.surgery.journal import StepRow

    with journal._session.begin() as s:
        s.execute(delete(StepRow))
    assert history(client)["undo"]["edit_id"] == i3
    assert [client.post("/api/edits/undo").json()["undone"]["id"] for _ in range(2)] == [i3, i2]
    assert client.post("/api/edits/redo").json()["redone"]["id"] == i2
    assert staged_ids(client) == [i1, i2]


# -- a patch that is already applied ------------------------------------------------------------------


def test_verify_and_load_say_already_applied(client, tiny_model, tmp_path):
    base, _ = read_base(tiny_model, DOWN)
    body = {"tensor_name": DOWN, "op": "fill", "value": 0.5, "slice": {"dim0_start": 0, "dim0_end": 2, "dim1_start": 0, "dim1_end": 3}}
    edit(client, body)
    assert client.post("/api/patches", json={"name": "half", "description": "0.5 in a corner"}).status_code == 200
    r = client.post("/api/patches/half.hexpatch/verify").json()
    # the staged state holds the patch's new bytes: every entry conflicts, and that is the reason
    assert r["ok"] is False and r["already_applied"] is True and len(r["conflicts"]) == r["entries"] >= 1
    err = assert_error(client.post("/api/patches/half.hexpatch/load"), 409, "patch_conflict", "already applied")
    assert err["already_applied"] is True and len(err["conflicts"]) == r["entries"]
    assert len(client.get("/api/edits").json()["edits"]) == 1  # nothing staged

    # back to base: it applies cleanly; one byte of it elsewhere: an ordinary conflict, not "applied"
    client.delete("/api/edits")
    r = client.post("/api/patches/half.hexpatch/verify").json()
    assert r["ok"] is True and r["already_applied"] is False
    edit(client, {**body, "value": 0.25})
    r = client.post("/api/patches/half.hexpatch/verify").json()
    assert r["ok"] is False and r["already_applied"] is False
    err = assert_error(client.post("/api/patches/half.hexpatch/load"), 409, "patch_conflict")
    assert "already_applied" not in err


# -- the Open box's models, and the demo folder allowed by default --------------------------------------


def demo_layout(tmp_path):
    """A demo models folder as the builder leaves it (manifest and two model folders) in DATA_DIR."""
    models = tmp_path / "data" / "models"
    a = write_tiny_llama(models / "Alpha" / "model.safetensors")
    b = write_tiny_llama(models / "Beta" / "model.safetensors", seed=1)
    (models / "demo-models.json").write_text(json.dumps({"Alpha": {}, "Beta": {}}))
    (a.parent / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (b.parent / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    return models, a.parent, b.parent


def test_models_route_offers_current_recent_and_demo_models(tmp_path):
    from fastapi.testclient import TestClient

    from tensor_surgery.web.app import create_app

    models, alpha, beta = demo_layout(tmp_path)
    outside = write_tiny_llama(tmp_path / "elsewhere" / "m" / "model.safetensors")
    settings = make_settings(tmp_path, alpha)  # default ALLOWED_ROOTS
    with TestClient(create_app(settings), base_url="http://127.0.0.1:8000") as c:
        listed = c.get("/api/models").json()["models"]
        assert [(m["name"], m["source"], m["current"]) for m in listed] == [
            ("Alpha", "current", True), ("Beta", "demo", False)]
        assert listed[1]["path"] == str(beta)
        # opening the other demo model works with default settings, and Alpha becomes "recent"
        opened = open_model(c, listed[1]["path"])
        assert opened["name"] == "Beta" and opened["hf"] == {"architectures": ["BertModel"], "causal_lm": False}
        listed = c.get("/api/models").json()["models"]
        assert [(m["name"], m["source"]) for m in listed] == [("Beta", "current"), ("Alpha", "recent")]
        assert c.get("/api/model").json()["hf"]["causal_lm"] is False
        open_model(c, alpha)
        assert c.get("/api/model").json()["hf"] == {"architectures": ["LlamaForCausalLM"], "causal_lm": True}
        # a model outside the roots is neither offered nor opened
        assert_error(c.post("/api/model", json={"path": str(outside)}), 403, "path_not_allowed")
        assert all(m["path"] != str(outside.parent) for m in c.get("/api/models").json()["models"])


def test_demo_folder_of_model_path_is_allowed_by_default(tmp_path):
    """MODEL_PATH names a demo model in another DATA_DIR (a checkout's data/models): its sibling
    demo models open with default settings; a folder beside the demo folder does not."""
    models, alpha, beta = demo_layout(tmp_path)
    s = make_settings(tmp_path / "other-data-dir", alpha)
    roots = s.resolved_allowed_roots
    assert models.resolve() in roots
    assert (tmp_path / "other-data-dir" / "data" / "models").resolve() in roots  # DATA_DIR/models itself
    from tensor_surgery.workspace import AllowedRoots

    assert beta / "model.safetensors" in AllowedRoots(roots)
    assert tmp_path / "elsewhere" not in AllowedRoots(roots)


def test_models_dir_linked_elsewhere_is_allowed(tmp_path):
    """DATA_DIR/models as a link to a folder outside DATA_DIR (roots are judged by real paths)."""
    real, alpha, beta = demo_layout(tmp_path / "store")
    data = tmp_path / "data-dir"
    data.mkdir()
    (data / "models").symlink_to(real, target_is_directory=True)
    s = make_settings(tmp_path, data / "models" / "Alpha")
    s = type(s)(_env_file=None, model_path=data / "models" / "Alpha", data_dir=data, patch_dir=tmp_path / "p")
    from tensor_surgery.workspace import AllowedRoots

    assert data / "models" / "Beta" / "model.safetensors" in AllowedRoots(s.resolved_allowed_roots)


def test_hf_hint_without_or_with_a_broken_config(tmp_path, tiny_model):
    from fastapi.testclient import TestClient

    from tensor_surgery.web.app import create_app

    settings = make_settings(tmp_path, tiny_model, allowed_roots=[tmp_path])
    with TestClient(create_app(settings), base_url="http://127.0.0.1:8000") as c:
        assert c.get("/api/model").json()["hf"] == {"architectures": [], "causal_lm": None}
        other = tmp_path / "models" / "broken" / "model.safetensors"
        other.parent.mkdir(parents=True)
        shutil.copyfile(tiny_model, other)
        (other.parent / "config.json").write_text('{"architectures": [1, "GPT2LMHeadModel"')  # not JSON
        assert open_model(c, other)["hf"] == {"architectures": [], "causal_lm": None}
        (other.parent / "config.json").write_text('{"architectures": [1, "GPT2LMHeadModel"]}')
        c.post("/api/model", json={"path": str(tiny_model)})
        assert open_model(c, other)["hf"] == {"architectures": ["GPT2LMHeadModel"], "causal_lm": True}
