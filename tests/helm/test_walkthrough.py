"""docs/helm.md's walkthrough from zero renders: its values file passes the
chart's schema and templates and gives valid Kubernetes objects running the
image it pushed; and the chart's default image is what `make image` builds."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess

import pytest
import yaml

from tests.image.pod import CHART, HELM, ROOT, RenderedPod, helm_template

WALKTHROUGH = (ROOT / "docs" / "helm.md").read_text()
DIGEST = "sha256:" + "ab" * 32


def _package_version() -> str:
    found = re.search(r'^version = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.M)
    assert found is not None
    return found.group(1)


def _require_helm() -> None:
    if not HELM.is_file():
        missing = f"no helm binary at {HELM}: run `make tools`"
        if os.environ.get("CI"):
            pytest.fail(missing)
        pytest.skip(missing)


def test_chart_default_image_is_what_make_image_tags() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    makefile = (ROOT / "Makefile").read_text()
    repository = re.search(r"^IMAGE_REPOSITORY \?= (\S+)$", makefile, re.M)
    assert repository is not None
    assert values["image"]["repository"] == repository.group(1)
    assert values["image"]["tag"] == ""  # so the tag is appVersion...
    assert chart["appVersion"] == _package_version()  # ...which is the package version
    assert "$(IMAGE_REPOSITORY):$(VERSION)" in makefile


def test_walkthrough_values_render_to_valid_objects(tmp_path: pathlib.Path) -> None:
    _require_helm()
    import kubernetes_validate as kv

    step = WALKTHROUGH.split("**4. Write the values**", 1)[1]
    block = re.search(r"```yaml\n(.*?)```", step, re.S)
    assert block is not None, "step 4 of the walkthrough lost its values file"
    values = tmp_path / "my-values.yaml"
    values.write_text(block.group(1).replace("sha256:...", DIGEST))
    try:
        manifests = helm_template([values], tmp_path)
    except subprocess.CalledProcessError as error:
        pytest.fail(f"helm template refused the walkthrough's values:\n{error.stderr}")
    for manifest in manifests:
        kv.validate(manifest, "1.30.0", strict=True)
    pod = RenderedPod.from_manifests(manifests)
    assert pod.image() == f"registry.example.com/imaging/image-service@{DIGEST}"
    assert pod.spec["imagePullSecrets"] == [{"name": "registry-credentials"}]
    server_env = pod.environment("server")
    assert server_env["IMAGE_SERVICE_STORAGE"] == "r2"
    env_from = pod.container("server")["envFrom"]
    assert {"secretRef": {"name": "image-service-credentials"}} in env_from
