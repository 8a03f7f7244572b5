"""hud_ray/redact.py: what is masked, at which depth, and what is left readable."""

from __future__ import annotations

import logging

from hud_ray.redact import Scrubber, install_log_scrubber, redacted, run_scrubber, secret_values
from hud_ray.results import ResultWriter, read_manifest, read_results
from hud_ray.schema import RolloutResult, Status


def test_masks_secret_keys_container_values_and_url_credentials_at_any_depth():
    options = {
        "api_key": "dtn-0123456789", "image": "python:3.11",
        "env": {"OPENAI_API_KEY": "sk-abcdef", "LOG_LEVEL": "debug"},
        "nested": {"deeper": [{"env_vars": {"X": "y-secret-value"}}, {"token": "t0k3n-abc"}]},
        "api_url": "https://bob:hunter22@api.example.com/v1", "secrets": ["prod-creds"],
        "retries": 4, "zygote": True,
    }
    out = redacted(options)
    assert out["api_key"] == "***" and out["image"] == "python:3.11"
    assert out["env"] == {"OPENAI_API_KEY": "***", "LOG_LEVEL": "***"}  # every env value
    assert out["nested"] == {"deeper": [{"env_vars": {"X": "***"}}, {"token": "***"}]}
    assert out["api_url"] == "https://***@api.example.com/v1"
    assert out["secrets"] == ["***"] and out["retries"] == 4 and out["zygote"] is True
    assert secret_values(options) == {"dtn-0123456789", "sk-abcdef", "y-secret-value",
                                      "t0k3n-abc", "hunter22", "prod-creds"}  # "bob", "debug": too short to scrub


def test_scrubber_masks_values_in_rows_and_leaves_other_text():
    scrub = run_scrubber({"env": {"K": "sk-live-999"}}, {"HUD_API_KEY": "hud-key-777",
                                                         "PYTHONPATH": "/src/path"})
    row = {"error_message": "refused sk-live-999 (hud-key-777) at http://u:p@h/",
           "steps": [{"args": {"key": "sk-live-999"}}], "reward": 0.5, "status": "env_error"}
    assert scrub.row(row) == {"error_message": "refused *** (***) at http://***@h/",
                              "steps": [{"args": {"key": "***"}}], "reward": 0.5,
                              "status": "env_error"}
    assert scrub.text("/src/path ok") == "/src/path ok"  # not a secret's name: untouched


def test_writer_scrubs_parquet_and_manifest(tmp_path):
    scrub = Scrubber({"sk-live-999"})
    writer = ResultWriter(tmp_path / "r", config={"note": "uses sk-live-999"}, scrubber=scrub)
    writer.add(RolloutResult(run_id="r", rollout_key="a#0", slug="a", template_id="t",
                             group_id="g", status=Status.ENV_ERROR,
                             error_message="bad key sk-live-999").to_row())
    writer.close("finished", error="sk-live-999 rejected")
    assert read_results(tmp_path / "r").column("error_message").to_pylist() == ["bad key ***"]
    manifest = read_manifest(tmp_path / "r")
    assert manifest["config"]["note"] == "uses ***" and manifest["error"] == "*** rejected"


def test_log_records_are_scrubbed(caplog):
    install_log_scrubber(Scrubber({"sk-logged-123"}))
    with caplog.at_level(logging.WARNING):
        logging.getLogger("some.sdk").warning("create failed: %s", "env={'K': 'sk-logged-123'}")
    assert "sk-logged-123" not in caplog.text and "***" in caplog.text
