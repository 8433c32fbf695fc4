"""The command line: fixed verbs, --json, exit codes 0/1/2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from safetensors import safe_open



def test_ls_json_matches_file(run, tiny_model):
    r = run("ls", tiny_model, "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    with safe_open(str(tiny_model), "np") as f:
        keys = set(f.keys())
    assert {t["name"] for t in out["tensors"]} == keys
    assert out["model"]["tensor_count"] == len(keys)
    assert all("metadata_for_canvas" in t for t in out["tensors"])


def test_ls_text_and_match(run, tiny_model):
    r = run("ls", tiny_model, "--match", r"layers\.1\..*proj")
    assert r.exit_code == 0
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 + 7 and all("layers.1." in line for line in lines[1:])
    assert run("ls", tiny_model, "--match", "(").exit_code == 2


def test_stats_json_matches_numpy(run, tiny_model):
    name = "model.layers.0.self_attn.q_proj.weight"
    r = run("stats", tiny_model, name, "--json")
    assert r.exit_code == 0, r.output
    s = json.loads(r.output)["stats"][name]
    with safe_open(str(tiny_model), "pt") as f:
        ref = f.get_tensor(name).double().numpy()
    assert s["mean"] == pytest.approx(ref.mean(), rel=1e-12)
    assert s["max"] == ref.max() and s["numel"] == ref.size


def test_stats_all_tensors_text(run, tiny_model):
    r = run("stats", tiny_model)
    assert r.exit_code == 0
    assert "model.embed_tokens.weight" in r.output and "sparsity" in r.output


def test_bad_input_exits_2_with_one_line(run, tmp_path, tiny_model):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    for args in (("ls", bad), ("stats", bad), ("ls", tmp_path / "missing"), ("stats", tiny_model, "no.such.tensor")):
        r = run(*args)
        assert r.exit_code == 2, (args, r.output)
    r = run("ls", bad, "--json")
    err = json.loads(r.output)["error"]
    assert err["code"] == "invalid_model_file" and err["file"] == str(bad)


def test_real_process_exit_code_and_message(tmp_path):
    bad = tmp_path / "trunc.safetensors"
    bad.write_bytes(b"\xff" * 8)
    p = subprocess.run([sys.executable, "-m", "tensor_surgery.cli", "ls", str(bad)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(bad) in lines[0] and "header length" in lines[0]


@pytest.mark.parametrize(
    "args, message, field",
    [
        (("ls", "{model}", "--json", "--bogus"), "No such option '--bogus'", None),
        (("ls", "--json"), "Missing argument 'MODEL'", "model"),
        (("--json", "ls", "{model}"), "No such option '--json'", None),
        (("stats", "{model}", "--threshold", "abc", "--json"), "'abc' is not a valid float", "threshold"),
        (("patch", "apply", "{model}", "--json"), "Missing argument 'PATCHES...'", "patches"),
        (("nosuchverb", "--json"), "No such command 'nosuchverb'", None),
    ],
)
def test_usage_errors_with_json_print_a_json_error(run, tiny_model, args, message, field):
    """--json anywhere on the line: click's own usage errors come as a JSON error too, exit 2."""
    r = run(*(a.format(model=tiny_model) for a in args))
    assert r.exit_code == 2, r.output
    err = json.loads(r.stdout)["error"]  # stdout is one JSON document, nothing else
    assert err["code"] == "usage_error" and message in err["message"], err
    assert err.get("field") == field
    assert r.stdout.strip().count("\n") == 0 and r.stderr == ""  # one line, nothing else
    assert err["usage"].startswith("Usage: ")  # what click would have printed, as data
    if args[0] == "--json":
        return  # (without it, that line is valid)
    # without --json, click's usual text on stderr and the same exit status
    r = run(*(a.format(model=tiny_model) for a in args if a != "--json"))
    assert r.exit_code == 2 and "Usage:" in r.stderr and r.stdout == ""


def test_json_help_and_success_keep_their_exit_status(run, tiny_model):
    r = run("ls", "--help", "--json")
    assert r.exit_code == 0 and "List the tensors" in r.stdout
    assert run("ls", tiny_model, "--json").exit_code == 0
