"""A non-editable install serves the page: templates and static files ship as package data."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from .conftest import REPO

pytestmark = pytest.mark.slow


def test_non_editable_install_serves_the_page(tmp_path, tiny_model):
    target = tmp_path / "site"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(REPO)],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert build.returncode == 0, build.stderr
    assert (target / "tensor_surgery" / "web" / "templates" / "index.html").is_file()

    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        import tensor_surgery
        assert Path(tensor_surgery.__file__).resolve().is_relative_to(Path({str(target)!r}).resolve()), tensor_surgery.__file__
        from fastapi.testclient import TestClient
        from tensor_surgery.settings import Settings
        from tensor_surgery.web.app import create_app
        s = Settings(_env_file=None, model_path=Path({str(tiny_model)!r}), data_dir=Path({str(tmp_path / "data")!r}),
                     patch_dir=Path({str(tmp_path / "patches")!r}), allowed_roots=[Path({str(tmp_path)!r})])
        with TestClient(create_app(s), base_url="http://127.0.0.1:8000") as c:
            page = c.get("/")
            assert page.status_code == 200 and "<html" in page.text.lower(), page.status_code
            js = c.get("/static/js/main.js")
            assert js.status_code == 200 and "import" in js.text, js.status_code
            css = c.get("/static/css/app.css")
            assert css.status_code == 200, css.status_code
        print("served")
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(target)  # the installed copy first, never the checkout
    ran = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert ran.returncode == 0 and "served" in ran.stdout, ran.stderr[-3000:]
