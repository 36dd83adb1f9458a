"""Killed with SIGKILL at chosen moments, a re-run of the same command resumes and
produces the same bytes as an uninterrupted run; nothing appears under the final
name before the merge is complete."""

import signal

import pytest
import yaml
from merge_helpers import folder_bytes, merge_cli, write_recipe


@pytest.mark.parametrize("kill_at", ["tensor:1", "tensor:17", "metadata", "publish"])
def test_resume_after_sigkill_gives_identical_bytes(models, tmp_path, uninterrupted, kill_at):
    config, out = write_recipe(models, tmp_path), tmp_path / "out"
    killed = merge_cli(config, out, kill_at=kill_at)
    assert killed.returncode == -signal.SIGKILL
    assert not out.exists() and (tmp_path / ".out.partial").is_dir()
    resumed = merge_cli(config, out)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr
    assert folder_bytes(out) == uninterrupted
    assert not (tmp_path / ".out.partial").exists()


def test_rerun_after_completion_is_a_no_op_and_a_changed_recipe_starts_afresh(models, tmp_path):
    config, out = write_recipe(models, tmp_path), tmp_path / "out"
    assert merge_cli(config, out, kill_at="tensor:5").returncode == -signal.SIGKILL
    changed = write_recipe(models, tmp_path, parameters={"t": 0.25})
    assert merge_cli(changed, out).returncode == 0
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    assert merge_cli(write_recipe(models, fresh, parameters={"t": 0.25}), fresh / "out").returncode == 0
    assert folder_bytes(out) == folder_bytes(fresh / "out")
    again = merge_cli(changed, out)
    assert again.returncode == 0 and "nothing to do" in again.stderr


def test_dare_resumes_with_the_same_masks(models, tmp_path):
    """A resumed DARE merge draws each remaining tensor's masks from where mergekit's one stream
    would be, whichever tensors were finished before the kill."""
    from test_engine import multi_config

    path = tmp_path / "dare.yml"
    path.write_text(yaml.safe_dump(multi_config(models, "dare_ties")))
    fresh = merge_cli(path, tmp_path / "fresh")
    assert fresh.returncode == 0, fresh.stderr
    assert merge_cli(path, tmp_path / "out", kill_at="tensor:20").returncode == -signal.SIGKILL
    resumed = merge_cli(path, tmp_path / "out")
    assert resumed.returncode == 0 and "resuming: 20 of 39" in resumed.stderr, resumed.stderr
    assert folder_bytes(tmp_path / "out") == folder_bytes(tmp_path / "fresh")
