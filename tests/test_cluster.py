"""cluster.yaml: valid for Ray's own cluster-config schema, secure by default, no credentials."""
import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CONFIG = yaml.safe_load((ROOT / "cluster.yaml").read_text())


def validate(config):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(config))


def test_valid_for_rays_schema():
    validate(CONFIG)
    import jsonschema

    bad = {**CONFIG, "max_wrokers": 3}
    with pytest.raises(jsonschema.ValidationError, match="max_wrokers"):
        validate(bad)


def test_head_runs_no_trials_and_gpu_workers_autoscale_from_zero():
    types = CONFIG["available_node_types"]
    assert types[CONFIG["head_node_type"]]["resources"] == {"CPU": 0}
    workers = [t for n, t in types.items() if n != CONFIG["head_node_type"]]
    assert workers and all(t["min_workers"] == 0 for t in workers)
    assert all(t["node_config"]["InstanceType"].startswith(("g5", "g6")) for t in workers)
    assert any(t["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot"
               for t in workers)
    image = CONFIG["docker"]["image"]
    assert re.fullmatch(r"rayproject/ray:\d+\.\d+\.\d+-py3\d+-gpu", image), image  # pinned


def test_only_ssh_is_opened_and_no_ray_port_is_public():
    perms = CONFIG["provider"]["security_group"]["IpPermissions"]
    for p in perms:
        assert (p["FromPort"], p["ToPort"], p["IpProtocol"]) == (22, 22, "tcp"), p
        for r in p.get("IpRanges", []):
            assert r["CidrIp"] != "0.0.0.0/0", "SSH must not be open to the world"
        assert not p.get("Ipv6Ranges"), "no IPv6 ingress"
    commands = "\n".join(CONFIG["head_start_ray_commands"] + CONFIG["worker_start_ray_commands"])
    assert "0.0.0.0" not in commands
    assert "--dashboard-host=127.0.0.1" in commands
    assert all("RAY_AUTH_MODE=token" in c for c in commands.splitlines() if "ray start" in c)


def test_setup_refers_to_files_that_exist_and_no_token_in_the_repo():
    for local in CONFIG["file_mounts"].values():
        if local.startswith("~"):  # the user's own token, from their home, never the repo
            assert "auth_token" in local
            continue
        assert (ROOT / local).exists(), local
    setup = "\n".join(CONFIG["setup_commands"])
    assert "pip install" in setup and "/home/ray/vggbn" in setup
    from vggbn.data import prepare  # the function the setup calls exists  # noqa: F401
    tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True).stdout
    assert "auth_token" not in tracked


def test_no_credentials_anywhere_in_the_repository():
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files"], capture_output=True,
                           text=True).stdout.split()
    pattern = re.compile(r"AKIA[0-9A-Z]{16}|aws_secret_access_key\s*=|BEGIN (RSA|OPENSSH) PRIVATE KEY")
    for f in files:
        path = ROOT / f
        if path.is_file() and path.stat().st_size < 1_000_000:
            assert not pattern.search(path.read_text(errors="ignore")), f
