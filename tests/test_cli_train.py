"""`lopt train` end to end, and its answers to bad input."""

import json

import pytest

from lopt.cli import main


def test_train_digits_end_to_end(tmp_path, capsys):
  out = tmp_path / "run"
  code = main(["train", "--task", "digits-mlp-32", "--optimizer", "adam", "--lr", "3e-3",
               "--steps", "600", "--seed", "0", "--out", str(out), "--no-progress"])
  assert code == 0
  final = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert final["task"] == "digits-mlp-32" and final["steps"] == 600
  first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
  # Loss falls clearly below its start (ln 10 = 2.30 for 10 classes) and accuracy is real.
  assert final["valid_loss"] < 0.5 * first["valid_loss"]
  assert final["valid_accuracy"] > 0.85
  assert (out / "loss_curve.png").exists() and (out / "result.json").exists()


@pytest.mark.parametrize("argv, message", [
    (["--task", "no-such-task"], "valid tasks"),
    (["--task", "digits-mlp-32", "--optimizer", "adamm"], "valid names"),
    (["--task", "digits-mlp-32", "--steps", "-5"], "--steps must be a positive"),
    (["--task", "digits-mlp-32", "--lr", "0"], "--lr must be > 0"),
    (["--task", "digits-mlp-32", "--lr=-1e-3"], "--lr must be > 0"),
    (["--task", "digits-mlp-32", "--set", "oops"], "KEY=VALUE"),
    (["--task", "digits-mlp-32", "--optimizer", "adam", "--checkpoint", "x.state"],
     "takes no --checkpoint"),
])
def test_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, argv, message):
  out = tmp_path / "run"
  code = main(["train", *argv, "--out", str(out), "--no-progress"])
  assert code == 2
  assert message in capsys.readouterr().err
  assert not out.exists()


def test_unknown_subcommand_is_a_usage_error(capsys):
  assert main(["no-such-command"]) == 2
  assert "invalid choice" in capsys.readouterr().err


def test_train_digits_with_official_celo_weights(tmp_path, capsys, shared_dir):
  ckpt = shared_dir / "pretrained" / "celo" / "celo_theta.state"
  if not ckpt.exists():
    pytest.skip(f"official Celo weights not found at {ckpt}")
  out = tmp_path / "celo"
  code = main(["train", "--task", "digits-mlp-32", "--optimizer", "celo", "--checkpoint",
               str(ckpt), "--steps", "300", "--out", str(out), "--no-progress"])
  assert code == 0
  final = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert final["uses_num_steps"] is True and final["checkpoint"] == str(ckpt)
  rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
  first_step_loss = rows[1]["train_loss"]  # mean train loss of the first chunk
  assert final["train_loss"] < 0.2 * first_step_loss
  assert final["valid_loss"] < 0.3 * rows[0]["valid_loss"]


def test_missing_fashion_mnist_files_say_how_to_get_them(tmp_path, monkeypatch, capsys):
  from lopt.tasks import _data, datasets
  monkeypatch.setenv("LOPT_DATA_DIR", str(tmp_path / "data"))
  monkeypatch.setenv("LOPT_FASHION_MNIST_DIR", str(tmp_path / "no-idx-files-here"))
  datasets.clear_cache()
  _data.image_data.cache_clear()
  try:
    code = main(["train", "--task", "fmnist8-mlp-32", "--steps", "10", "--out",
                 str(tmp_path / "run"), "--no-progress"])
  finally:
    datasets.clear_cache()
    _data.image_data.cache_clear()
  assert code == 2
  err = capsys.readouterr().err
  assert "apt-get install dataset-fashion-mnist" in err
  assert not (tmp_path / "run").exists()
