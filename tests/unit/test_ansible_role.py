"""The Ansible role's static parts agree with the code: which daemon reads which setting.

The role restarts only the daemons whose settings changed; it knows which daemon reads
which setting from ansible/roles/heimdall/vars/settings.yml, generated from the settings
table. Regenerate it with `python -m tests.unit.test_ansible_role`.
"""
from pathlib import Path

from heimdall import settings

VARS = Path(__file__).resolve().parents[2] / "ansible" / "roles" / "heimdall" / "vars" / "settings.yml"


def render() -> str:
    lines = ["---",
             "# Generated from heimdall/settings.py by `python -m tests.unit.test_ansible_role`; do not edit.",
             "# The settings each daemon reads: the role restarts a daemon when one of them changes.",
             "heimdall__daemon_settings:"]
    for program in sorted(settings.NODE | settings.PEER):
        lines.append(f"  {program}:")
        lines += [f"    - {s.name}" for s in settings.SETTINGS if program in s.programs]
    return "\n".join(lines) + "\n"


def test_role_knows_which_daemon_reads_which_setting():
    assert VARS.read_text() == render(), "stale: run `python -m tests.unit.test_ansible_role`"


def test_role_and_playbook_pass_ansible_lint_production_profile():
    import os
    import subprocess
    import sys

    ansible = VARS.parents[3]
    bin_dir = Path(sys.executable).parent
    result = subprocess.run([str(bin_dir / "ansible-lint"), "--offline", "--profile", "production", "--nocolor",
                             "site.yml", "roles/heimdall"], cwd=ansible, capture_output=True, text=True, check=False,
                            env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
                                 "ANSIBLE_ROLES_PATH": str(ansible / "roles")})
    assert result.returncode == 0, result.stdout + result.stderr


if __name__ == "__main__":
    VARS.write_text(render())
