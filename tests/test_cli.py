import subprocess
import sys

import pytest

from synthcp3d.cli import main


@pytest.mark.parametrize(
    "argv", [[], ["phantom"], ["phantom", "pancreas"], ["phantom", "scenes"], ["demo"], ["report"]]
)
def test_help_on_every_level(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    assert "usage: synthcp3d" in capsys.readouterr().out


def test_module_entry_point_and_missing_args():
    r = subprocess.run([sys.executable, "-m", "synthcp3d", "phantom", "pancreas"], capture_output=True, text=True)
    assert r.returncode == 2 and "--out" in r.stderr
