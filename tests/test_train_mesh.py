"""`photon-jax train --mesh`: the grammar of eval and serve, applied to the config before anything runs.
A mesh that trains is run by tests/test_readme_road.py (the README's sharded command on 8 CPU devices)."""

import pytest

from photon_jax.cli.common import with_mesh
from photon_jax.cli.main import main
from photon_jax.config import load_config


@pytest.mark.parametrize("mesh, expected", [
    ("data=two", "--mesh 'data=two': expected data=N,fsdp=N,tensor=N"),
    ("pipeline=2", "--mesh 'pipeline=2': expected data=N,fsdp=N,tensor=N"),
    ("data=16", "mesh data=16,fsdp=1,tensor=1 needs 16 devices, but 8 are available"),
])
def test_a_bad_mesh_is_one_line_and_exit_2(mesh, expected, tmp_path, capsys):
    # a corpus that does not exist: were the mesh checked only after the data, this would fail on the data
    argv = ["train", "--mesh", mesh, "--workdir", str(tmp_path / "run"), f"data.corpus={tmp_path / 'none.txt'}",
            f"data.data_dir={tmp_path / 'data'}"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("photon-jax: error: "), err
    assert expected in err[0], err[0]


def test_mesh_sets_the_axis_sizes_and_keeps_the_configs_rules():
    rules = "mesh.rules=[[batch, data], [vocab, tensor], [embed, fsdp]]"
    cfg = with_mesh(load_config(preset="photon-tiny", overrides=["mesh.data=8", rules]), "fsdp=4,tensor=2")
    assert (cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor) == (1, 4, 2)  # an axis left out is 1
    assert [list(r) for r in cfg.mesh.rules] == [["batch", "data"], ["vocab", "tensor"], ["embed", "fsdp"]]
    assert with_mesh(cfg, None) is cfg
