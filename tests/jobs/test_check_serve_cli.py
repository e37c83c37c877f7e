"""The check through the front ends (issue 24): ``tda attribute --check``, ``tda check
REPORT.json`` (same figures as the library, one line for a bad option or report) and
``POST /api/check`` of ``tda serve`` (its answer validates against the server's own
OpenAPI schema; a report of another index is a 400)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from tda.jobs.cli import main
from tests.jobs.test_serve import _passage

FAST = ["--steps", "1", "--draws", "3", "--seed", "5"]


@pytest.fixture(scope="module")
def report_file(planted_root, planted_corpus, tmp_path_factory):
    prompt, output, _ = _passage(planted_root, planted_corpus)
    result = CliRunner().invoke(main, ["attribute", str(planted_root), "--prompt", prompt,
                                       "--output", output, "-k", "3", "--input-attribution",
                                       "none", "--device", "cpu", "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    path = tmp_path_factory.mktemp("check") / "report.json"
    path.write_text(result.output)
    return path


def test_check_cli_adds_the_check_and_is_deterministic(report_file):
    runs = [CliRunner().invoke(main, ["check", str(report_file), *FAST, "--json"])
            for _ in range(2)]  # fmt: skip
    assert all(r.exit_code == 0 for r in runs), runs[0].output
    one, two = (json.loads(r.output) for r in runs)
    assert one["schema_version"] == 4 and one["check"]["draws"] == 3
    assert [c["check"] for c in one["chunks"]] == [c["check"] for c in two["chunks"]]
    first = one["chunks"][0]["check"]
    assert first["chunks"] == 3 and len(first["random_drops"]) == 3
    # the output is its source's text: unlearning the hits (the source among them) costs
    # it more than random chunks do
    assert first["attributed_drop"] > first["random_mean"]
    text = CliRunner().invoke(main, ["check", str(report_file), *FAST])
    assert text.exit_code == 0 and "unlearning its 3 hits lowers its log p" in text.output


def test_check_cli_refuses_bad_input_in_one_line(report_file, tmp_path):
    result = CliRunner().invoke(main, ["check", str(report_file), "--draws", "1"])
    assert result.exit_code == 2 and "--draws must be in 2..256, got 1" in result.output
    assert len(result.output.strip().splitlines()) == 1
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"kind": "something else"}))
    result = CliRunner().invoke(main, ["check", str(bad)])
    assert result.exit_code != 0 and "not a tda attribution report" in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_check_cli_checks_an_output_whose_text_tokenizes_otherwise(
    planted_root, planted_corpus, tmp_path
):
    """A report whose output text does not tokenize back to its tokens (as a generated
    output's may) is checked on the tokens it records; without them it is refused."""
    from tda.attribution.attributor import Attributor
    from tests.attribution.test_check import spelled

    prompt, output, _ = _passage(planted_root, planted_corpus)
    attributor = Attributor.from_root(str(planted_root), device="cpu")
    ids = spelled(attributor.tokenizer, output[:40])
    report = attributor.attribute(prompt, ids, k=2, input_attribution="none")
    path = tmp_path / "spelled.json"
    path.write_text(report.to_json())
    result = CliRunner().invoke(main, ["check", str(path), *FAST, "--json"])
    assert result.exit_code == 0, result.output
    checked = json.loads(result.output)
    assert checked["output_token_ids"] == list(ids) and checked["check"]["draws"] == 3
    assert all(c["check"]["chunks"] == len(c["hits"]) == 2 for c in checked["chunks"])
    old = json.loads(path.read_text())
    del old["output_token_ids"]  # a report written before they were recorded
    path.write_text(json.dumps(old))
    result = CliRunner().invoke(main, ["check", str(path), *FAST])
    assert result.exit_code != 0 and "its text tokenizes to" in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_attribute_check_flag(planted_root, planted_corpus):
    prompt, output, _ = _passage(planted_root, planted_corpus)
    result = CliRunner().invoke(main, ["attribute", str(planted_root), "--prompt", prompt,
                                       "--output", output, "-k", "2", "--input-attribution",
                                       "none", "--device", "cpu", "--check", "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["check"]["steps"] == 3  # tda check's defaults
    assert all(c["check"]["chunks"] == len(c["hits"]) for c in report["chunks"])


def test_serve_check_endpoint(planted_root, report_file):
    pytest.importorskip("fastapi")
    import jsonschema
    from fastapi.testclient import TestClient

    from tda.jobs.serve import create_app

    client = TestClient(create_app(str(planted_root), device="cpu"), base_url="http://127.0.0.1")
    spec = client.get("/openapi.json").json()
    text = report_file.read_text()
    answer = client.post("/api/check", json={"report": text, "steps": 1, "draws": 3, "seed": 5})
    assert answer.status_code == 200, answer.text
    schema = spec["paths"]["/api/check"]["post"]["responses"]["200"]["content"][
        "application/json"]["schema"]  # fmt: skip
    jsonschema.validate(answer.json(), {**schema, "components": spec["components"]},
                        cls=jsonschema.Draft202012Validator)  # fmt: skip
    cli = json.loads(CliRunner().invoke(main, ["check", str(report_file), *FAST, "--json"]).output)
    assert [c["check"] for c in answer.json()["chunks"]] == [c["check"] for c in cli["chunks"]]
    other = json.loads(text) | {"index_manifest_id": "f" * 64}
    refused = client.post("/api/check", json={"report": json.dumps(other)})
    assert refused.status_code == 400 and "index manifest" in refused.json()["error"]
    assert client.post("/api/check", json={"report": text, "draws": 0}).status_code == 422
