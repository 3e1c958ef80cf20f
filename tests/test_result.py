"""CompressionResult (dcvit/result.py): result.json and the CLI's --json are strict JSON."""

import json

from helpers.runs import compress_cli

from dcvit.engine import Engine
from dcvit.scoring import Trial


def test_result_json_is_strict_json(capsys, tmp_path, cli_env, monkeypatch):
    real = Engine.score

    def nan_score(self, *args, **kwargs):  # e.g. a ranking without a metric set has kl = NaN
        return Trial(**{**real(self, *args, **kwargs).__dict__, "kl": float("nan"), "score": float("nan")})

    monkeypatch.setattr(Engine, "score", nan_score)
    code, out, _ = compress_cli(capsys, cli_env, tmp_path / "out", "--json")

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    saved = json.loads((tmp_path / "out" / "result.json").read_text(), parse_constant=refuse)
    assert code == 0 and json.loads(out, parse_constant=refuse) == saved
    assert set(saved["scores"].values()) == {None}
